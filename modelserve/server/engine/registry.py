"""Registered models: name -> versions -> ModelVersion (archive, config, batcher, workers)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modelserve.archive import Archive
from modelserve.config import ModelConfig
from modelserve.errors import ConflictError, ModelNotFoundError, ModelServeError
from modelserve.server.engine.batching import Batcher
from modelserve.server.engine.pool import WorkerPool
from modelserve.server.engine.scaling_policy import ScaleState, autoscaled
from modelserve.server.observability.metrics import VersionMetrics


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    url: str
    archive: Archive
    config: ModelConfig
    pool: WorkerPool
    batcher: Batcher
    metrics: VersionMetrics
    loaded_at_startup: bool = False
    registered_at: float = field(default_factory=time.time)
    workflow: str | None = None  # the workflow that registered it (engine/workflows.py)
    scaling: ScaleState | None = None  # its autoscaling (engine/autoscale.py)

    def describe(self) -> dict[str, Any]:
        """TorchServe's describe-model fields (those that apply here)."""
        cfg = self.config
        scaling = self.scaling
        auto = scaling is not None and autoscaled(scaling.knobs, cfg.min_workers,
                                                  cfg.max_workers)
        idle = cfg.sequence_max_idle_ms > 0
        out: dict[str, Any] = {
            "modelName": self.name,
            "modelVersion": self.version,
            "modelUrl": self.url,
            "runtime": self.archive.manifest.runtime,
            # the bounds; a fixed pool's count (a failed scale leaves it at 0)
            "minWorkers": cfg.min_workers if auto else self.pool.target,
            "maxWorkers": cfg.max_workers if auto else max(cfg.max_workers, self.pool.target),
            "batchSize": self.batcher.batch_size,  # served (a model may take fewer)
            "maxBatchDelay": cfg.max_batch_delay,
            "responseTimeout": cfg.response_timeout,
            "startupTimeout": cfg.startup_timeout,
            "maxRetryTimeoutInSec": 300,
            "clientTimeoutInMills": 0,
            "parallelType": "",
            "parallelLevel": 0,
            "deviceType": cfg.device_type or "cpu",
            "continuousBatching": cfg.continuous_batching,
            "useJobTicket": False,
            "useVenv": False,
            # TorchServe's: the flag as configured, the rest only with a positive idle time
            "stateful": cfg.sequence_batching,
            "sequenceMaxIdleMSec": cfg.sequence_max_idle_ms,
            "sequenceTimeoutMSec": cfg.sequence_timeout_ms if idle else 0,
            "maxNumSequence": cfg.max_sequences if idle else 0,
            "maxSequenceJobQueueSize": cfg.max_sequence_job_queue_size if idle else 0,
            "loadedAtStartup": self.loaded_at_startup,
            "workers": [w.describe() for w in self.pool.workers],
            "jobQueueStatus": {
                "remainingCapacity": cfg.job_queue_size - len(self.batcher.pending),
                "pendingRequests": len(self.batcher.pending),
            },
            # modelserve's additions: Healthy | Loading | Unhealthy (crash loop), restarts,
            # and how the last worker died.
            "health": self.pool.health,
            "workerRestarts": self.pool.restarts,
        }
        if self.pool.last_death:
            out["lastWorkerDeath"] = self.pool.last_death
        if scaling is not None:  # modelserve's: the autoscaler's count and last decision
            out["autoscale"] = {"enabled": auto, "currentWorkers": self.pool.target,
                                "minWorkers": cfg.min_workers, "maxWorkers": cfg.max_workers,
                                "lastDecision": scaling.last, "lastChange": scaling.changed}
        return out


class ForbiddenError(ModelServeError):
    status = 403
    type = "InvalidModelVersionException"


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._defaults: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted(self._models)

    def snapshot_names(self) -> list[str]:
        """The names snapshots keep: not a workflow's models (TorchServe's SnapshotManager
        leaves them out, and workflows are not restored)."""
        return [name for name in self.names()
                if not any(mv.workflow for mv in self._models[name].values())]

    def versions(self, name: str) -> list[ModelVersion]:
        if name not in self._models:
            raise ModelNotFoundError(f"Model not found: {name}")
        return list(self._models[name].values())

    def all(self) -> list[ModelVersion]:
        return [mv for versions in self._models.values() for mv in versions.values()]

    def default_version(self, name: str) -> str:
        if name not in self._defaults:
            raise ModelNotFoundError(f"Model not found: {name}")
        return self._defaults[name]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFoundError(f"Model not found: {name}")
        if version is None:
            return versions[self._defaults[name]]
        mv = versions.get(version)
        if mv is None:
            raise ModelNotFoundError(f"Model version {version} does not exist for model {name}")
        return mv

    def check_new(self, name: str, version: str) -> None:
        if version in self._models.get(name, {}):
            raise ConflictError(f"Model version {version} is already registered for model {name}")

    def add(self, mv: ModelVersion) -> None:
        self.check_new(mv.name, mv.version)
        self._models.setdefault(mv.name, {})[mv.version] = mv
        self._defaults.setdefault(mv.name, mv.version)  # the first version is the default

    def set_default(self, name: str, version: str) -> None:
        self.get(name, version)
        self._defaults[name] = version

    def remove(self, name: str, version: str | None = None) -> ModelVersion:
        """Take a version out; the default one only when it is the last."""
        mv = self.get(name, version)
        versions = self._models[name]
        if mv.version == self._defaults[name] and len(versions) > 1:
            raise ForbiddenError(f"Cannot remove default version for model {name}")
        del versions[mv.version]
        if not versions:
            del self._models[name]
            del self._defaults[name]
        return mv

    def discard(self, mv: ModelVersion) -> bool:
        """Take out this very version object (not a newer registration of the same name and
        version), the default one too: a version whose workers failed to start must go.
        Another version, the earliest registered, becomes the default. False if absent."""
        if not self.holds(mv):
            return False
        versions = self._models[mv.name]
        del versions[mv.version]
        if not versions:
            del self._models[mv.name]
            del self._defaults[mv.name]
        elif self._defaults[mv.name] == mv.version:
            self._defaults[mv.name] = next(iter(versions))
        return True

    def holds(self, mv: ModelVersion) -> bool:
        """Whether this very version object is registered."""
        return self._models.get(mv.name, {}).get(mv.version) is mv

    def has(self, name: str, version: str) -> bool:
        return version in self._models.get(name, {})
