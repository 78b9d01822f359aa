"""Autoscaling settings: the server's (config.yaml ``autoscale:``) and a model's override
(model-config.yaml ``autoscale:``), kept beside ``modelserve.config``, which holds both.

What they mean is in docs/autoscaling.md; the policy that reads them is
``modelserve.server.engine.scaling_policy``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Millis = Annotated[float, Field(gt=0, le=3_600_000, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
Share = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class ModelAutoscale(BaseModel):
    """A model's own autoscaling (model-config.yaml ``autoscale:``); unset keys take the
    server's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    scale_up_after_ms: Millis | None = None
    cool_down_s: Seconds | None = None
    low_use: Share | None = None


class AutoscaleSettings(BaseModel):
    """The server's autoscaling (config.yaml ``autoscale:``). Every field is documented in
    config.yaml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="Scale each model version between its minWorkers and maxWorkers on "
        "its own load, where maxWorkers > minWorkers; false: keep minWorkers, as TorchServe.")
    scale_up_after_ms: Millis = Field(
        100.0, description="Add a worker once the oldest request waiting for a busy worker "
        "has waited this long, or requests have waited at every look for a second (and the "
        "workers' lanes are busy, and a core is free).")
    cool_down_s: Seconds = Field(
        30.0, description="Remove a worker after this long of low use (and this long after "
        "the last change); minWorkers 0: stop the last one after this long without requests.")
    low_use: Share = Field(
        0.5, description="Low use: over the cool-down, the busy batch lanes would keep one "
        "worker fewer at most this share of its time busy.")
    interval_ms: Millis = Field(200.0, description="How often each model's load is looked at.")
    cores: int | None = Field(
        None, ge=1, description="Cores the workers of every model share: a model adds a worker "
        "only while the workers of busy models hold fewer. None: the cores this process may "
        "use.")

    def merged(self, own: ModelAutoscale | None) -> AutoscaleSettings:
        """These settings under a model's own."""
        given: dict[str, Any] = own.model_dump(exclude_none=True) if own is not None else {}
        return self.model_copy(update=given)
