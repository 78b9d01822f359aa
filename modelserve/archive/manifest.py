"""MANIFEST.json: the fields TorchServe's archiver (0.12) writes, in its key order."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ARCHIVER_VERSION = "0.12.0"
MANIFEST_PATH = "MAR-INF/MANIFEST.json"
# A model's name and version become URL path segments and file names.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$"
MAX_NAME_LENGTH = 200  # a file name (255 bytes at most) is the name plus an archive suffix
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-.+]*$"  # and not "all" (every version)


def check_model_name(name: str) -> None:
    """ValueError unless ``name`` can name a model (one path segment, one file name)."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"invalid model name {name[:200]!r}: letters, digits, '_', '-' and "
                         "'.', starting with a letter or digit")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"model name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} "
                         "characters")


def check_model_version(version: str) -> None:
    """ValueError unless ``version`` can name a model version ("all" means every one)."""
    if not re.fullmatch(MODEL_VERSION_PATTERN, version) or version == "all":
        raise ValueError(f"invalid model version {version[:200]!r}: letters, digits, '_', "
                         "'-', '.' and '+', starting with a letter or digit, not 'all'")


class ModelSection(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    model_name: str = Field(alias="modelName")
    serialized_file: str | None = Field(None, alias="serializedFile")
    handler: str = Field(alias="handler")
    model_file: str | None = Field(None, alias="modelFile")
    model_version: str = Field("1.0", alias="modelVersion")
    requirements_file: str | None = Field(None, alias="requirementsFile")
    config_file: str | None = Field(None, alias="configFile")
    extensions: str | None = Field(None, alias="extensions")


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    created_on: str = Field(alias="createdOn")
    runtime: str = "python"
    model: ModelSection
    archiver_version: str = Field(ARCHIVER_VERSION, alias="archiverVersion")

    @classmethod
    def new(cls, **model: Any) -> Manifest:
        created = dt.datetime.now().strftime("%d/%m/%Y %H:%M:%S")
        return cls(created_on=created, model=ModelSection(**model))

    def to_json_dict(self) -> dict[str, Any]:
        """The dict as written to MANIFEST.json: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True)
