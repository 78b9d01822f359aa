"""The parameters of a model registration (``POST /models``), TorchServe's names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$"


class RegisterRequest(BaseModel):
    """Query parameters or a JSON body with the same snake_case keys."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field("", description="Archive in the model store, a local path or a URL.")
    model_name: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Overrides the manifest's name.")
    handler: str | None = Field(None, description="Overrides the manifest's handler.")
    runtime: str | None = Field(None, description="python or python3.")
    batch_size: int | None = Field(None, ge=1)
    max_batch_delay: float | None = Field(None, ge=0, description="Milliseconds.")
    initial_workers: int | None = Field(None, ge=0)
    response_timeout: float | None = Field(None, gt=0, description="Seconds.")
    startup_timeout: float | None = Field(None, gt=0, description="Seconds.")
    synchronous: bool = Field(True, description="Wait for the workers to load.")
