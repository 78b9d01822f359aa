"""What a worker process is started with: one model version's spec, as argv and environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to load one model version."""

    model_name: str
    model_version: str
    model_dir: str
    handler: str
    extra_paths: tuple[str, ...]  # put first on the worker's sys.path (installed requirements)
    manifest: dict[str, Any]
    model_yaml_config: dict[str, Any]
    batch_size: int
    device_type: str
    startup_timeout: float
    response_timeout: float
    pipeline_depth: int
    batch_threads: int = 0  # 0: the worker decides (modelserve.worker.lanes.plan)
    timeout_status: int = 504  # the status of a request whose batch timed out
    metrics_config: str | None = None  # TorchServe's metrics.yaml, for the handler's cache
    envelope: str | None = None  # TorchServe's service_envelope (modelserve.worker.envelopes)
    lifecycle_log: str = "modelserve"  # torchserve: start failures logged in TorchServe's words
    extra_env: tuple[tuple[str, str], ...] = ()  # e.g. sequence batching's header names

    def env(self) -> dict[str, str]:
        """The thread variables are the worker's own to set (``--threads``), before torch."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(self.extra_env)}
        if self.extra_paths:
            env["PYTHONPATH"] = os.pathsep.join(
                [*self.extra_paths, *filter(None, [os.environ.get("PYTHONPATH")])])
        return env

    def args(self, index: int, threads: int, most_threads: int = 0) -> list[str]:
        """``python -m modelserve.worker`` arguments, but for ``--fd``; ``most_threads``: the
        most the pool may give it later (its lanes are planned for them)."""
        return [
            "--model-dir", self.model_dir,
            "--model-name", self.model_name,
            "--model-version", self.model_version,
            "--handler", self.handler,
            "--manifest", json.dumps(self.manifest),
            "--model-yaml-config", json.dumps(self.model_yaml_config),
            "--batch-size", str(self.batch_size),
            "--index", str(index),
            "--device-type", self.device_type,
            "--threads", str(threads),
            "--most-threads", str(most_threads),
            "--batch-threads", str(self.batch_threads),
            *(["--metrics-config", self.metrics_config] if self.metrics_config else []),
            *(["--envelope", self.envelope] if self.envelope else []),
        ]
