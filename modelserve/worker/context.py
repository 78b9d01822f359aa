"""The ``context`` a handler receives: TorchServe's Context, attribute for attribute.

Handlers written for TorchServe read ``context.system_properties``, ``context.manifest``,
request headers and ids, and set response status, content type and headers through it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from modelserve import __version__
from modelserve.worker.metrics import MetricsCache


class Context:
    """Per-worker context, refreshed with each batch's request ids and headers."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any],
        batch_size: int,
        gpu: int | None,
        model_yaml_config: dict[str, Any] | None = None,
        limit_max_image_pixels: bool = True,
        metrics_config: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self.model_yaml_config = model_yaml_config or {}
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",
            "server_version": __version__,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.metrics = MetricsCache(model_name, metrics_config)
        self.request_ids: dict[int, str] = {}
        self._request_headers: list[dict[str, str]] = []
        self._response_status: dict[int, tuple[int, str]] = {}
        self._response_headers: dict[int, dict[str, str]] = {}
        self.start_time = time.time()
        # the headers of sequence batching (stateful handlers read them by these names):
        # TorchServe's defaults unless the variables say otherwise (the frontend sets them
        # from ts_header_key_sequence_*, which TorchServe leaves to the operator)
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID",
                                                "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv("TS_REQUEST_SEQUENCE_START",
                                                   "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv("TS_REQUEST_SEQUENCE_END",
                                                 "ts_request_sequence_end")
        # set by a handler: one callable per request of the batch, given its result, saying
        # whether its answer is the last (worker/batch.py's _stream_next, as TorchServe's)
        self.stopping_criteria: list[Callable[[Any], bool | None]] | None = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    # -- per batch ---------------------------------------------------------------------------
    def begin_batch(self, request_ids: list[str], headers: list[dict[str, str]]) -> None:
        self.request_ids = dict(enumerate(request_ids))
        self._request_headers = headers
        self._response_status = {}
        self._response_headers = {}

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        headers = self._request_headers[idx] if idx < len(self._request_headers) else {}
        return headers.get(key.lower())

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self._request_headers[idx] if idx < len(self._request_headers) else {}

    def get_sequence_id(self, idx: int) -> str | None:
        return self.get_request_header(idx, self.header_key_sequence_id)

    # -- response ----------------------------------------------------------------------------
    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self._response_status[idx] = (code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for idx in self.request_ids:
            self.set_response_status(code, phrase, idx)

    def get_response_status(self, idx: int) -> tuple[int, str] | None:
        return self._response_status.get(idx)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._response_headers.setdefault(idx, {})[key.lower()] = str(value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._response_headers.get(idx, {})
