"""The parameters of a model registration (``POST /models``), TorchServe's names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modelserve.archive.manifest import MODEL_NAME_PATTERN
from modelserve.config import BatchSize, DelayMs, TimeoutS


class RegisterRequest(BaseModel):
    """Query parameters or a JSON body with the same snake_case keys."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field("", description="Archive in the model store, a local path or a URL.")
    model_name: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Overrides the manifest's name.")
    handler: str | None = Field(None, pattern=r"^[^\x00]+$",
                                description="Overrides the manifest's handler.")
    runtime: str | None = Field(None, description="python or python3.")
    batch_size: BatchSize | None = None
    max_batch_delay: DelayMs | None = Field(None, description="Milliseconds.")
    initial_workers: int | None = Field(None, ge=0)
    response_timeout: TimeoutS | None = Field(None, description="Seconds.")
    startup_timeout: TimeoutS | None = Field(None, description="Seconds.")
    synchronous: bool = Field(True, description="Wait for the workers to load.")
