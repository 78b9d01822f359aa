"""The OIP v2 operations both transports (REST, gRPC) call: metadata, readiness, inference,
Triton's config / statistics, and the model repository mapped onto DataPlane management.

A model's signature comes, first found, from its archive's model-config.yaml (``v2:`` with
``platform``, ``inputs``, ``outputs``), else from its handler as a worker reports it at load
(the ONNX graph's own signature for the tensor handler), else it is unknown and requests are
only checked for self-consistency.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from modelserve import __version__
from modelserve.archive.manifest import check_model_name
from modelserve.datatypes import TensorError
from modelserve.errors import BadRequestError, ModelServeError
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.jobs import Result
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelVersion
from modelserve.server.engine.store import ARCHIVE_SUFFIXES, store_models
from modelserve.server.engine.streams import Stream
from modelserve.server.transport.v2.types import InferRequest, Signature

EXTENSIONS = ["binary_tensor_data", "parameters", "model_repository", "statistics",
              "model_configuration"]
_TO_CONFIG_TYPE = {"BYTES": "TYPE_STRING"}


@dataclass(slots=True)
class _Stats:
    """Triton's per-model statistics (cumulative; durations in ns)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    infer_ns: int = 0
    inferences: int = 0
    last_ms: int = 0

    def record(self, ok: bool, req: InferRequest, elapsed_ns: int, queued_ns: int) -> None:
        if ok:
            self.success += 1
            self.success_ns += elapsed_ns
            self.queue_ns += queued_ns
            self.infer_ns += elapsed_ns - queued_ns
            self.inferences += req.inputs[0].shape[0] if req.inputs[0].shape else 1
            self.last_ms = int(time.time() * 1000)
        else:
            self.fail += 1
            self.fail_ns += elapsed_ns


class V2Core:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane
        self._signatures: weakref.WeakKeyDictionary[ModelVersion, Signature] = \
            weakref.WeakKeyDictionary()
        self._stats: weakref.WeakKeyDictionary[ModelVersion, _Stats] = \
            weakref.WeakKeyDictionary()

    # -- health and metadata -----------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "modelserve", "version": __version__, "extensions": EXTENSIONS}

    def server_ready(self) -> bool:
        """False while models load, while one crash-loops, and while the server drains."""
        return self.dp.is_ready()

    def model(self, name: str, version: str | None) -> ModelVersion:
        return self.dp.registry.get(name, version or None)

    def model_ready(self, name: str, version: str | None) -> bool:
        return self.dp.is_model_ready(name, version or None)

    def signature(self, mv: ModelVersion) -> Signature:
        sig = self._signatures.get(mv)
        if sig is not None:
            return sig
        configured = mv.archive.model_yaml_config.get("v2")
        if isinstance(configured, dict):
            sig = Signature.from_dict(configured)
        else:
            reported = next((w.signature for w in mv.pool.workers if w.signature), None)
            if reported is None:
                return Signature(platform="python")  # no worker has described it yet
            sig = Signature.from_dict(reported)
        self._signatures[mv] = sig
        return sig

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        mv = self.model(name, version)
        sig = self.signature(mv)
        return {"name": mv.name, "versions": [v.version for v in self.dp.registry.versions(name)],
                "platform": sig.platform, "inputs": [s.json() for s in sig.inputs],
                "outputs": [s.json() for s in sig.outputs]}

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration (JSON form): what perf_analyzer reads. Shapes leave
        out the batch dimension, which ``max_batch_size`` stands for."""
        mv = self.model(name, version)
        sig = self.signature(mv)

        def dims(shape: list[int]) -> list[int]:
            return shape[1:] if shape else shape

        def tensor(spec: Any) -> dict[str, Any]:
            dtype = _TO_CONFIG_TYPE.get(spec.datatype, f"TYPE_{spec.datatype}")
            return {"name": spec.name, "data_type": dtype, "dims": dims(spec.shape)}

        return {
            "name": mv.name, "platform": sig.platform, "backend": "modelserve",
            "version_policy": {"specific": {"versions": [triton_version(mv.version)]}},
            "max_batch_size": mv.config.batch_size,
            "input": [tensor(s) for s in sig.inputs],
            "output": [tensor(s) for s in sig.outputs],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(mv.config.max_batch_delay * 1000)},
            "instance_group": [{"name": mv.name, "count": mv.pool.target, "kind": "KIND_CPU"}],
        }

    def model_stats(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton's statistics: every version of ``name`` when no version is given (every
        model without a name). Each request counts once in success, queue and the three
        compute steps, as in Triton; the worker's time is all ``compute_infer`` (decoding
        and encoding happen in the worker too), so input and output show 0 ns."""
        if name and not version:
            versions = self.dp.registry.versions(name)
        else:
            versions = [self.model(name, version)] if name else self.dp.registry.all()
        out = []
        for mv in versions:
            st = self._stats.get(mv) or _Stats()
            n = st.success
            out.append({
                "name": mv.name, "version": triton_version(mv.version),
                "last_inference": st.last_ms, "inference_count": st.inferences,
                "execution_count": mv.metrics.executions,
                "inference_stats": {
                    "success": {"count": n, "ns": st.success_ns},
                    "fail": {"count": st.fail, "ns": st.fail_ns},
                    "queue": {"count": n, "ns": st.queue_ns},
                    "compute_input": {"count": n, "ns": 0},
                    "compute_infer": {"count": n, "ns": st.infer_ns},
                    "compute_output": {"count": n, "ns": 0},
                    "cache_hit": {"count": 0, "ns": 0},  # no response cache
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [],
            })
        return out

    # -- inference ---------------------------------------------------------------------------
    async def infer(self, name: str, version: str | None, req: InferRequest,
                    headers: dict[str, str], request_id: str
                    ) -> tuple[ModelVersion, list[list[Any]]]:
        """Validate, batch, run; the output tensors ``[[name, datatype, shape, raw], ...]``."""
        mv = self._validated(name, version, req)
        stats = self._stats_of(mv)
        timing: list[float] = []
        ok = False
        try:
            result = await self.dp.infer_version(mv, version or None, b"", "", headers,
                                                  request_id, req.wire(), timing)
            if isinstance(result, Stream):
                result.close()
                raise ModelServeError("this model streams its answers; OIP v2 infer does "
                                      "not: use gRPC ModelStreamInfer or /predictions",
                                      status=400)
            if result.status >= 400 or result.tensors is None:
                raise ModelServeError.from_body(result.status, result.body)
            ok = True
            return mv, result.tensors
        finally:
            elapsed, queued = (int(t * 1e9) for t in timing) if timing else (0, 0)
            stats.record(ok, req, elapsed, queued)

    async def infer_stream(self, name: str, version: str | None, req: InferRequest,
                           headers: dict[str, str], request_id: str
                           ) -> tuple[ModelVersion, AsyncIterator[Result]]:
        """Validate, then the answer as it comes (``DataPlane.infer_stream``): one Result with
        ``tensors`` when the handler answers whole, else one Result per chunk of its stream
        (``tensors`` None, ``body`` the chunk). Errors before the first chunk are raised (as
        from :meth:`infer`); an error after it is raised by the iterator."""
        mv = self._validated(name, version, req)
        return mv, self._stream(mv, version, req, headers, request_id)

    def _validated(self, name: str, version: str | None, req: InferRequest) -> ModelVersion:
        """The model version, once ``req`` fits its signature (400 otherwise)."""
        mv = self.model(name, version)
        try:
            self.signature(mv).validate(req)
        except TensorError as exc:
            raise BadRequestError(str(exc)) from None
        return mv

    def _stats_of(self, mv: ModelVersion) -> _Stats:
        stats = self._stats.get(mv)
        if stats is None:
            stats = self._stats[mv] = _Stats()
        return stats

    async def _stream(self, mv: ModelVersion, version: str | None, req: InferRequest,
                      headers: dict[str, str], request_id: str) -> AsyncIterator[Result]:
        stats = self._stats_of(mv)
        start = time.perf_counter()
        ok = False
        chunks = self.dp.infer_stream(mv.name, version or None, b"", "", headers, request_id,
                                      req.wire())
        try:
            async for result in chunks:
                if result.status >= 400:
                    raise ModelServeError.from_body(result.status, result.body)
                yield result
            ok = True
        finally:
            await chunks.aclose()
            # a stream's time in the queue is not measured apart: all of it is infer
            stats.record(ok, req, int((time.perf_counter() - start) * 1e9), 0)

    # -- model repository (tritonclient's load_model / unload_model) -------------------------
    def repository_index(self) -> list[dict[str, Any]]:
        loaded = {mv.name: mv for mv in self.dp.registry.all()}
        stored = store_models(self.dp.settings.model_store)
        names = set(loaded) | {_archive_name(path.name) for path in stored}
        out = []
        for name in sorted(names):
            mv = loaded.get(name)
            if mv is None:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
            else:
                ready = mv.pool.ready_count > 0
                out.append({"name": name, "version": mv.version,
                            "state": "READY" if ready else "UNAVAILABLE",
                            "reason": "" if ready else "no ready worker"})
        return out

    async def load(self, name: str) -> None:
        """Register ``name`` from the model store (its archive ``name.mar`` etc.); a model
        already registered stays as it is."""
        if name in self.dp.registry.names():
            return
        try:
            check_model_name(name)  # before it names a file
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        store = self.dp.settings.model_store
        for suffix in (*ARCHIVE_SUFFIXES, ""):
            if (store / f"{name}{suffix}").exists():
                url = f"{name}{suffix}"
                break
        else:
            raise ModelServeError(f"failed to load '{name}': no archive named {name}.mar, "
                                  f"{name}.tar.gz, {name}.zip or directory {name} in the "
                                  "model store", status=400)
        await self.dp.register(RegisterRequest(url=url, model_name=name, synchronous=True))

    async def unload(self, name: str) -> None:
        versions = self.dp.registry.versions(name)
        default = self.dp.registry.default_version(name)
        for mv in sorted(versions, key=lambda v: v.version == default):
            await self.dp.unregister(name, mv.version)


def triton_version(version: str) -> str:
    """A version as Triton's statistics give it. Triton numbers versions with integers, and
    perf_analyzer reads a statistics entry's version as one (it parses the number, then
    looks the entry up again by that number's digits), so a whole-number version such as
    TorchServe's default ``1.0`` is sent as ``1``; any other version is sent unchanged."""
    whole, dot, fraction = version.partition(".")
    if whole.isdigit() and whole.isascii() and (not dot or (fraction and set(fraction) == {"0"})):
        return str(int(whole))
    return version


def _archive_name(filename: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename
