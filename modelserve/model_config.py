"""A model version's serving parameters (TorchServe's model-config.yaml keys) and the bounds
they share with the server's settings and the management API."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelserve.autoscale_config import ModelAutoscale

# Bounds of the batching parameters wherever they are set (config.yaml, model-config.yaml,
# POST /models): finite, and small enough for the OIP model config's integer fields (Triton's
# max_batch_size is an int32, max_queue_delay_microseconds a uint64).
BatchSize = Annotated[int, Field(ge=1, le=2**31 - 1)]
DelayMs = Annotated[float, Field(ge=0, le=86_400_000, allow_inf_nan=False)]  # at most a day
TimeoutS = Annotated[float, Field(gt=0, le=604_800, allow_inf_nan=False)]  # at most a week
# Batches one worker runs at once (modelserve.worker.lanes); "auto": the handler decides.
BatchThreads = Annotated[int, Field(ge=1, le=64)] | Literal["auto"]


class ServerDefaults(Protocol):
    """What a model takes from the server's settings (modelserve.config.Settings)."""

    default_workers_per_model: int
    batch_size: int
    max_batch_delay: float
    response_timeout: float
    startup_timeout: float
    job_queue_size: int
    batch_threads: int | Literal["auto"]


class ModelConfig(BaseModel):
    """Per-model-version serving parameters (TorchServe's model-config.yaml keys).

    Unknown top-level keys of model-config.yaml are kept for the handler
    (``context.model_yaml_config``), as TorchServe does.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    min_workers: int = Field(1, ge=0, alias="minWorkers")
    max_workers: int = Field(1, ge=0, alias="maxWorkers")
    batch_size: BatchSize = Field(1, alias="batchSize")
    max_batch_delay: DelayMs = Field(100.0, alias="maxBatchDelay")  # milliseconds
    response_timeout: TimeoutS = Field(120.0, alias="responseTimeout")  # seconds
    startup_timeout: TimeoutS = Field(120.0, alias="startupTimeout")  # seconds
    job_queue_size: int = Field(1000, ge=1, alias="jobQueueSize")
    device_type: Literal["cpu", "gpu"] | None = Field(None, alias="deviceType")
    batch_threads: BatchThreads = Field("auto", alias="batchThreads")
    autoscale: ModelAutoscale | None = Field(None, alias="autoscale")  # over the server's
    # TorchServe's sequence batching (stateful models: engine/sequences.py), on when
    # sequenceBatching is true and sequenceMaxIdleMSec positive, as there
    sequence_batching: bool = Field(False, alias="sequenceBatching")
    sequence_max_idle_ms: int = Field(0, ge=0, le=10**12, alias="sequenceMaxIdleMSec")
    sequence_timeout_ms: int = Field(0, ge=0, le=10**12, alias="sequenceTimeoutMSec")
    max_num_sequence: int = Field(1, ge=1, le=2**31 - 1, alias="maxNumSequence")
    max_sequence_job_queue_size: int = Field(1, ge=1, le=2**31 - 1,
                                             alias="maxSequenceJobQueueSize")
    # TorchServe's continuous batching: a batch runs step by step (engine/continuous.py)
    continuous_batching: bool = Field(False, alias="continuousBatching")

    @property
    def sequenced(self) -> bool:
        """Whether requests are batched by sequence (TorchServe needs both keys)."""
        return self.sequence_batching and self.sequence_max_idle_ms > 0

    @property
    def max_sequences(self) -> int:
        """Sequences open at once: TorchServe's maxNumSequence, at least one batch for each
        worker the model may have."""
        return max(self.max_num_sequence, self.batch_size * self.max_workers)

    @field_validator("device_type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def resolve(
        cls, settings: ServerDefaults, yaml_config: dict[str, Any], overrides: dict[str, Any],
        configured: dict[str, Any] | None = None, default_workers: int | None = None,
    ) -> ModelConfig:
        """Server defaults, then the server's per-model ``models`` entry, then the archive's
        model-config.yaml, then API parameters (TorchServe's order). ``default_workers``
        replaces default_workers_per_model as the server default (registration_workers)."""
        workers = settings.default_workers_per_model if default_workers is None \
            else default_workers
        values: dict[str, Any] = {
            "min_workers": workers,
            "max_workers": workers,
            "batch_size": settings.batch_size,
            "max_batch_delay": settings.max_batch_delay,
            "response_timeout": settings.response_timeout,
            "startup_timeout": settings.startup_timeout,
            "job_queue_size": settings.job_queue_size,
            "batch_threads": settings.batch_threads,
        }
        values.update(cls.model_validate(configured or {}).model_dump(exclude_unset=True))
        from_yaml = cls.model_validate(yaml_config).model_dump(exclude_unset=True)
        values.update(from_yaml)
        if "min_workers" in from_yaml and "max_workers" not in from_yaml:
            values["max_workers"] = max(values["min_workers"], values["max_workers"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["max_workers"] = max(values["max_workers"], values["min_workers"])
        return cls.model_validate(values)
