"""What the server registers when it starts: ``load_models`` and the snapshot of what the
management API changed (or a TorchServe snapshot's models), and the registry written back as
those snapshots."""

from __future__ import annotations

import logging
from typing import Any

from modelserve.config import Settings
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelRegistry
from modelserve.server.engine.snapshot import Snapshot
from modelserve.server.engine.store import store_models
from modelserve.server.engine.ts_snapshot import TsSnapshots, restore_requests, save_ts_snapshot

log = logging.getLogger("modelserve.dataplane")


def startup_archives(settings: Settings) -> list[tuple[str | None, str]]:
    """(name override, archive) pairs from ``load_models``; 'all' means the whole store."""
    entries: list[tuple[str | None, str]] = []
    for item in settings.load_models:
        if item == "all":
            entries += [(None, path.name) for path in store_models(settings.model_store)]
        elif "=" in item:
            name, _, archive = item.partition("=")
            entries.append((name.strip(), archive.strip()))
        else:
            entries.append((None, item.strip()))
    return entries


def snapshot_models(registry: ModelRegistry) -> list[dict[str, Any]]:
    """The registry as the snapshot keeps it: each version's archive, default flag,
    workers and batching."""
    models = []
    for name in registry.snapshot_names():
        default = registry.default_version(name)
        for mv in registry.versions(name):
            cfg = mv.config
            models.append({
                "name": name, "version": mv.version, "url": mv.url,
                "handler": mv.pool.spec.handler, "default": mv.version == default,
                "workers": cfg.min_workers, "max_workers": cfg.max_workers,
                "batch_size": cfg.batch_size, "max_batch_delay": cfg.max_batch_delay,
                "response_timeout": cfg.response_timeout,
                "startup_timeout": cfg.startup_timeout,
                "loaded_at_startup": mv.loaded_at_startup,
            })
    return models


def startup_requests(settings: Settings, snapshot: Snapshot | None,
                     ) -> list[tuple[RegisterRequest, dict[str, Any]]]:
    """What to register at start: the snapshot's models (with their versions, defaults,
    workers and batching as they were), plus each load_models entry whose name the
    snapshot does not have. TorchServe ignores its ``--models`` once a snapshot exists,
    which silently drops a model added to the config later; here the config is always
    served, and the snapshot keeps what the management API changed. A TorchServe snapshot
    (``ts_model_snapshot``) replaces both: its models only, as TorchServe restores them."""
    if settings.ts_model_snapshot is not None:
        return restore_requests(settings)
    configured = [(RegisterRequest(url=url, model_name=name), {"loaded_at_startup": True})
                  for name, url in startup_archives(settings)]
    saved = snapshot.load() if snapshot is not None else None
    if saved is None:
        return configured
    log.info("restoring %d model version(s) from %s", len(saved),
             snapshot and snapshot.path)
    out = []
    for entry in saved:
        try:
            req = RegisterRequest(
                url=entry["url"], model_name=entry["name"], handler=entry.get("handler"),
                batch_size=entry.get("batch_size"),
                max_batch_delay=entry.get("max_batch_delay"),
                initial_workers=entry.get("workers"),
                response_timeout=entry.get("response_timeout"),
                startup_timeout=entry.get("startup_timeout"),
            )
        except ValueError as exc:
            log.error("snapshot entry %s is invalid, skipped: %s", entry.get("name"), exc)
            continue
        out.append((req, entry))
    names = {entry.get("name") for entry in saved}
    urls = {entry.get("url") for entry in saved}
    return out + [(req, extra) for req, extra in configured  # named: by name, else url
                  if (req.model_name not in names if req.model_name else req.url not in urls)]


def save_snapshots(registry: ModelRegistry, snapshot: Snapshot | None,
                   ts_snapshots: TsSnapshots | None, event: str,
                   missing: list[dict[str, Any]] | None = None) -> None:
    """Write the registry to models.json (but at shutdown: it holds what was registered) and
    to a TorchServe snapshot file for ``event`` (startup, snapshot or shutdown), those on.
    ``missing``: models.json entries of restored models not loaded yet, kept as they were."""
    if snapshot is not None and event != "shutdown":
        try:
            snapshot.save(snapshot_models(registry) + (missing or []))
        except OSError as exc:
            log.error("could not save the model snapshot %s: %s", snapshot.path, exc)
    if ts_snapshots is not None:
        save_ts_snapshot(ts_snapshots, event, registry)
