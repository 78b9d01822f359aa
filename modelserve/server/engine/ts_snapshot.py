"""TorchServe's config snapshots: the ``.cfg`` files a TorchServe deployment restarts from.

TorchServe 0.12 (``SnapshotManager``, ``FSSnapshotSerializer``) writes
``$LOG_LOCATION/config/<yyyyMMddHHmmssSSS>-<event>.cfg`` (``logs/config`` without
LOG_LOCATION): ``startup`` once the server is up, ``snapshot`` after each management change
(register, scale, set-default, unregister) and ``shutdown`` at stop. Each file is the server's
config.properties keys (Java properties) plus ``model_snapshot``: JSON with every model version's
archive (``marName``), default flag, workers and batching. Started without a config file,
TorchServe reads the latest of them as its config; any config.properties with a
``model_snapshot`` key (a snapshot given as ``--ts-config``) registers exactly those models,
each archive of which must be in the model store.

Here ``ts_config_snapshots`` turns the files on (the default under the TorchServe personality;
``--ncs`` turns them off), ``ts_snapshot_dir`` moves them, and the ``model_snapshot`` key is read
by ``modelserve.ts_config`` into ``ts_model_snapshot``. Unlike TorchServe, a file name taken
within the same millisecond moves on to the next one instead of dropping the snapshot, and a
file in the directory whose name starts with no time stamp is skipped instead of failing the
start.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import javaproperties

from modelserve.atomic import write_atomic
from modelserve.config import Settings
from modelserve.server.engine.registration import RegisterRequest

if TYPE_CHECKING:
    from modelserve.server.engine.registry import ModelRegistry

log = logging.getLogger("modelserve.snapshot")

STAMPED = re.compile(r"(\d{17})-")  # yyyyMMddHHmmssSSS-<event>.cfg
EVENTS = ("startup", "snapshot", "shutdown")
ModelStates = dict[str, dict[str, dict[str, Any]]]  # name -> version -> Model.getModelState


def snapshot_dir(settings: Settings) -> Path:
    """``ts_snapshot_dir``, else TorchServe's ``<LOG_LOCATION>/config``: ``config`` in the log
    files' ``log_dir`` (which is LOG_LOCATION under the personality), else in
    ``$LOG_LOCATION``, else ``logs/config``."""
    if settings.ts_snapshot_dir is not None:
        return settings.ts_snapshot_dir
    if settings.log_dir is not None:
        return settings.log_dir / "config"
    return Path(os.environ.get("LOG_LOCATION") or "logs") / "config"


def latest_snapshot(directory: Path) -> Path | None:
    """The file whose name has the latest time stamp (FSSnapshotSerializer.getLastSnapshot),
    or None when there is none."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    stamped = [(match.group(1), path.name, path) for path in entries
               if (match := STAMPED.match(path.name)) and path.is_file()]
    return max(stamped)[2] if stamped else None


def _number(value: float) -> float | int:
    """TorchServe keeps these as integers; a fraction (modelserve allows one) stays."""
    return int(value) if float(value).is_integer() else value


def model_states(registry: ModelRegistry) -> ModelStates:
    """Every version as TorchServe's Model.getModelState records it."""
    states: ModelStates = {}
    for name in registry.snapshot_names():
        default = registry.default_version(name)
        states[name] = {mv.version: {
            "defaultVersion": mv.version == default,
            "marName": mv.url,
            "minWorkers": mv.config.min_workers,
            "maxWorkers": max(mv.config.max_workers, mv.config.min_workers),
            "batchSize": mv.config.batch_size,
            "maxBatchDelay": _number(mv.config.max_batch_delay),
            "responseTimeout": _number(mv.config.response_timeout),
            "startupTimeout": _number(mv.config.startup_timeout),
            "runtimeType": mv.archive.manifest.runtime or "python",
        } for mv in registry.versions(name)}
    return states


def _stamp(ms: int) -> str:
    """SimpleDateFormat("yyyyMMddHHmmssSSS"), local time."""
    return datetime.fromtimestamp(ms // 1000).strftime("%Y%m%d%H%M%S") + f"{ms % 1000:03d}"


class TsSnapshots:
    """Writes the snapshot files into ``directory``; ``properties``: the config.properties
    keys each file carries besides ``model_snapshot``."""

    def __init__(self, directory: Path, properties: dict[str, str]) -> None:
        self.directory = directory
        self.properties = properties
        self._last_ms = 0
        self._started = False  # no shutdown snapshot of a server that never finished starting

    @classmethod
    def open(cls, settings: Settings) -> TsSnapshots | None:
        """The writer the settings ask for, or None (``ts_config_snapshots: false``)."""
        if not settings.ts_config_snapshots:
            return None
        return cls(snapshot_dir(settings), dict(settings.ts_properties))

    def _next_name(self, event: str) -> str:
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        while (self.directory / f"{_stamp(ms)}-{event}.cfg").exists():
            ms += 1
        self._last_ms = ms
        return f"{_stamp(ms)}-{event}.cfg"

    def save(self, event: str, models: ModelStates) -> Path | None:
        """Write ``<stamp>-<event>.cfg``; raises OSError when it cannot."""
        if event not in EVENTS:
            raise ValueError(f"unknown snapshot event {event!r}")
        if event == "shutdown" and not self._started:
            return None
        self._started = True
        name = self._next_name(event)
        snapshot = {"name": name, "modelCount": sum(len(v) for v in models.values()),
                    "created": int(time.time() * 1000), "models": models}
        out = io.StringIO()
        javaproperties.dump(
            {**self.properties, "model_snapshot": json.dumps(snapshot, indent=2,
                                                             ensure_ascii=False)},
            out, comments="Saving snapshot", ensure_ascii=False)
        path = self.directory / name
        write_atomic(path, out.getvalue().encode(), 0o600)  # it may hold keystore_pass
        return path


def save_ts_snapshot(writer: TsSnapshots, event: str, registry: ModelRegistry) -> None:
    """Save one snapshot; a failure is logged (TorchServe goes on serving too)."""
    try:
        path = writer.save(event, model_states(registry))
    except OSError as exc:
        log.error("could not save the %s snapshot in %s: %s", event, writer.directory, exc)
        return
    if path is not None:
        log.info("saved TorchServe snapshot %s", path)


def _in_store(mar: str) -> bool:
    """A plain archive name or store-relative path (not a URL or an absolute path)."""
    return not urlparse(mar).scheme and not Path(mar).is_absolute()


def missing_archives(settings: Settings) -> list[str]:
    """SnapshotManager.validate: each archive a snapshot names in the model store must be
    there, else TorchServe does not start. One message per missing archive."""
    return [f"Model archive file for model :{name}, version :{version} not found in model "
            f"store ({settings.model_store / state['marName']})"
            for name, versions in (settings.ts_model_snapshot or {}).items()
            for version, state in versions.items()
            if _in_store(state["marName"]) and not (settings.model_store
                                                    / state["marName"]).exists()]


def restore_requests(settings: Settings) -> list[tuple[RegisterRequest, dict[str, Any]]]:
    """The registrations a snapshot's models make (ModelManager.registerAndUpdateModel): the
    archive under the snapshot's model name, with its workers, batching and timeouts, and its
    default flag. load_models is not read then, as in TorchServe."""
    models = settings.ts_model_snapshot or {}
    log.info("restoring %d model version(s) from a TorchServe snapshot",
             sum(len(v) for v in models.values()))
    out = []
    for name, versions in models.items():
        for version, state in versions.items():
            try:
                req = RegisterRequest(
                    url=state["marName"], model_name=name,
                    batch_size=state.get("batchSize"),
                    max_batch_delay=state.get("maxBatchDelay"),
                    initial_workers=state.get("minWorkers"),
                    response_timeout=state.get("responseTimeout"),
                    startup_timeout=state.get("startupTimeout"))
            except ValueError as exc:
                log.error("snapshot entry %s %s is invalid, skipped: %s", name, version, exc)
                continue
            entry: dict[str, Any] = {"name": name, "version": version,
                                     "default": state.get("defaultVersion") is True}
            if isinstance(state.get("maxWorkers"), int):
                entry["max_workers"] = state["maxWorkers"]
            out.append((req, entry))
    return out
