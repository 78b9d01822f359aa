"""The registry's state on disk: models, versions, default versions and worker counts.

Written after every change (register, scale, set-default, unregister) to
``<state_dir>/models.json`` by write-to-temp + fsync + ``os.replace``, so a crash mid-write
leaves the previous snapshot whole. Read once at start: a snapshot that cannot be read is
renamed aside (``models.json.corrupt-<time>``), the reason is logged, and the server starts
without it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from modelserve.atomic import write_atomic

log = logging.getLogger("modelserve.snapshot")

FORMAT = 1
FILENAME = "models.json"


class Snapshot:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME

    def save(self, models: list[dict[str, Any]]) -> None:
        body = json.dumps({"format": FORMAT, "created": time.time(), "models": models},
                          indent=1).encode()
        write_atomic(self.path, body, 0o600)

    def load(self) -> list[dict[str, Any]] | None:
        """The saved models, or None when there is no usable snapshot."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a format-{FORMAT} snapshot")
            models = data["models"]
            if not isinstance(models, list) or not all(
                isinstance(m, dict) and isinstance(m.get("url"), str)
                and isinstance(m.get("name"), str) for m in models
            ):
                raise ValueError("'models' must be a list of {name, url, ...} objects")
            return models
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            aside = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("model snapshot %s is corrupt (%s); moved to %s; starting without it",
                      self.path, exc, aside)
            return None
