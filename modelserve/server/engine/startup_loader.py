"""Loading the models named at start (``load_models``, the snapshot, a TorchServe snapshot),
so that none is silently lost.

A model whose load fails for a transient reason (no descriptor or memory left, a worker
that did not come up) is retried with backoff: an archive that could not be opened by this
loader (1 s doubling to 30 s), workers that did not start by their pool's restart loop
(the same backoff a dead worker gets). A permanent failure (an archive that cannot load, a
handler it lacks) is not retried. Until every model named at start is loaded, readiness is
false and the log, describe and ``/ping`` say so; a permanent failure keeps it false unless
``ready_with_failed_models`` is set.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modelserve.config import Settings
from modelserve.errors import ConflictError, ModelNotFoundError, ModelServeError
from modelserve.server.engine.pool import MAX_BACKOFF_S
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelRegistry, ModelVersion
from modelserve.server.engine.snapshot import FILENAME

log = logging.getLogger("modelserve.dataplane")

_SCARCE = tuple(os.strerror(code) for code in (errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                                errno.ENOSPC, errno.EAGAIN))


def classify(exc: BaseException) -> tuple[str, bool]:
    """(reason, permanent): a client-side error (4xx) or an invalid archive is permanent,
    unless its text shows a scarce resource (an archive reader may wrap EMFILE); an OSError,
    a 5xx (workers that did not start) or anything unexpected is transient."""
    if isinstance(exc, ModelServeError):
        reason, permanent = exc.message, exc.status < 500
    elif isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, 'OSError')})", \
            False
    elif isinstance(exc, ValueError):
        reason, permanent = str(exc), True
    else:
        return f"{type(exc).__name__}: {exc}", False
    return reason, permanent and not any(text in reason for text in _SCARCE)


@dataclass
class Missing:
    """A model named at start that is not registered: why, and whether it is retried."""

    label: str  # the model's name when known, else its archive
    reason: str
    permanent: bool
    entry: dict[str, Any] = field(default_factory=dict)  # a models.json entry, if it is one


Add = Callable[[RegisterRequest, bool], Awaitable[ModelVersion]]


class StartupModels:
    def __init__(self, settings: Settings, registry: ModelRegistry, add: Add,
                 discard: Callable[[ModelVersion], Awaitable[None]],
                 save: Callable[[str], None]) -> None:
        """``add`` opens an archive and registers its version (no workers); ``discard``
        drops a version whose workers cannot start; ``save`` writes the snapshots."""
        self.settings = settings
        self.registry = registry
        self._add = add
        self._discard = discard
        self._save = save
        self.missing: dict[str, Missing] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # not ready before load() has registered what it can (the listeners come up first)
        self.opening = bool(settings.load_models or settings.ts_model_snapshot or (
            settings.model_snapshot and (settings.state_path / FILENAME).exists()))

    # -- readiness ---------------------------------------------------------------------------
    def blocking(self) -> list[Missing]:
        """The missing models that keep readiness false."""
        if self.opening:
            return [Missing("start-up", "the models named at start are being opened", False)]
        keep = self.settings.ready_with_failed_models
        return [m for m in self.missing.values() if not (m.permanent and keep)]

    def explain(self, exc: ModelNotFoundError, name: str) -> ModelNotFoundError:
        """A describe of a model named at start that is not loaded says why."""
        missing = self.missing.get(name) or next(  # an entry named by its archive only
            (m for m in self.missing.values() if PurePosixPath(m.label).stem == name), None)
        if missing is None:
            return exc
        state = "failed for good" if missing.permanent else "retrying"
        return ModelNotFoundError(f"{exc.message}: named at start, not loaded "
                                  f"({state}): {missing.reason}")

    def unsaved(self) -> list[dict[str, Any]]:
        """models.json entries of snapshot models still missing: the snapshot keeps them."""
        return [m.entry for m in self.missing.values() if "url" in m.entry]

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- loading -----------------------------------------------------------------------------
    async def load(self, requests: list[tuple[RegisterRequest, dict[str, Any]]]) -> list[str]:
        """Register every model, then start their workers together; returns one message per
        model not loaded (the others load, the transient failures go on being retried)."""
        errors: list[str] = []
        added: list[tuple[ModelVersion, dict[str, Any]]] = []
        defaults: dict[str, str] = {}
        self.opening = True
        try:
            for req, entry in requests:
                mv = await self._open(req, entry, errors)
                if mv is not None:
                    self._configure(mv, entry, defaults)  # its pool's target: not ready yet
                    added.append((mv, entry))
            for name, version in defaults.items():
                self.registry.set_default(name, version)
        finally:
            self.opening = False
        await asyncio.gather(*(self._start(mv, entry, errors) for mv, entry in added))
        for error in errors:
            log.error("could not load %s", error)
        self._save("startup")
        return errors

    async def _open(self, req: RegisterRequest, entry: dict[str, Any], errors: list[str],
                    retry: bool = True) -> ModelVersion | None:
        """Register the version; a failure is recorded (and, if transient and ``retry``,
        retried in the background)."""
        label = req.model_name or entry.get("name") or req.url
        try:
            mv = await self._add(req, entry.get("loaded_at_startup", False))
        except ConflictError as exc:  # named twice, or registered meanwhile: it is there
            errors.append(f"{req.url}: {exc.message}")
            self.missing.pop(label, None)
            return None
        except Exception as exc:
            reason, permanent = classify(exc)
            if not isinstance(exc, ModelServeError | ValueError | OSError):
                log.exception("opening %s failed", req.url)
            self.missing[label] = Missing(label, reason, permanent, entry)
            errors.append(f"{req.url}: {reason}" + ("" if permanent else " (retrying)"))
            if retry and not permanent:
                self._spawn(self._retry(req, entry, label))
            return None
        self.missing.pop(label, None)
        return mv

    def _configure(self, mv: ModelVersion, entry: dict[str, Any],
                   defaults: dict[str, str]) -> None:
        mv.pool.target = mv.config.min_workers  # so thread counts see every worker
        if "max_workers" in entry:
            mv.config.max_workers = max(entry["max_workers"], mv.config.min_workers)
        if entry.get("version") not in (None, mv.version):
            log.warning("snapshot: %s is now version %s of %s (the snapshot had %s)",
                        mv.url, mv.version, mv.name, entry["version"])
        if entry.get("default"):
            defaults[mv.name] = mv.version

    async def _start(self, mv: ModelVersion, entry: dict[str, Any],
                     errors: list[str]) -> None:
        """Start the version's workers; those that fail for a transient reason are left to
        the pool's restart loop (readiness waits for them), a permanent failure drops it."""
        try:
            await mv.pool.scale(mv.config.min_workers)
        except Exception as exc:
            reason, permanent = classify(exc)
            if permanent:
                await self._discard(mv)
                self.missing[mv.name] = Missing(mv.name, reason, True, entry)
                errors.append(f"{mv.url}: {reason}")
                return
            errors.append(f"{mv.url}: {reason} (workers retried with backoff)")
            mv.pool.restore_later(f"start failed: {reason}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, req: RegisterRequest, entry: dict[str, Any], label: str) -> None:
        """Open the archive again with backoff until it loads or fails for good."""
        delay = 1.0
        while (missing := self.missing.get(label)) is not None and not missing.permanent:
            log.warning("model %s is not loaded (%s); retrying in %.0f s", label,
                        missing.reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            errors: list[str] = []
            mv = await self._open(req, entry, errors, retry=False)
            if mv is None:
                if label in self.missing and self.missing[label].permanent:
                    log.error("could not load %s", errors[0])
                continue
            defaults: dict[str, str] = {}
            self._configure(mv, entry, defaults)
            for name, version in defaults.items():
                self.registry.set_default(name, version)
            await self._start(mv, entry, errors)
            for error in errors:
                log.error("could not load %s", error)
            log.info("model %s %s registered after a retry", mv.name, mv.version)
            self._save("snapshot")
