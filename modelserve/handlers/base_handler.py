"""BaseHandler: TorchServe's default handler, which custom handlers subclass.

``initialize`` picks the device from ``gpu_id``, loads the model in its format (see
``runtimes``: TorchScript, ONNX, eager model file + state_dict, torch.export, AOTInductor)
and ``index_to_name.json``, then applies ``torch.compile`` when model-config.yaml asks for it
(TorchServe's ``pt2`` key, below); ``handle`` runs preprocess -> inference -> postprocess.

``pt2: {compile: {enable: true, backend: inductor, mode: reduce-overhead, ...}}`` passes the
other keys to ``torch.compile``; TorchServe's older ``pt2: inductor`` and ``pt2: {backend:
...}`` forms still work. Compiling is lazy, so the worker runs warm-up batches (the largest
batch, marked dynamic, and batch 1, which dynamo specialises) before it reports ready: no
request pays for the compile. The warm-up input has ``handler.input_shape`` (or the model's
own signature) and ``handler.input_dtype``; handlers with other inputs override
``warmup_input``. The time is logged and sent as the ``CompileTime`` gauge (ms) with the
first batch's metrics. A compile that fails leaves the model uncompiled, as in TorchServe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modelserve import model_clock
from modelserve.handlers.errors import PredictionException
from modelserve.handlers.runtimes import input_shape, is_onnx, load_model, run_model
from modelserve.handlers.util import load_label_mapping

log = logging.getLogger(__name__)

CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_options(model_yaml_config: dict[str, Any]) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from TorchServe's ``pt2`` key; None: no compile."""
    pt2 = model_yaml_config.get("pt2")
    if pt2 is None:
        return None
    if isinstance(pt2, str):
        options: dict[str, Any] = {"backend": pt2}
    elif not isinstance(pt2, dict):
        raise ValueError(f"pt2 in model-config.yaml must be a string or a mapping, not {pt2!r}")
    elif "compile" in pt2:
        compile_section = pt2["compile"] or {}
        if not isinstance(compile_section, dict) or compile_section.get("enable") is not True:
            return None
        options = {k: v for k, v in compile_section.items() if k != "enable"}
    elif "export" in pt2:
        return None  # AOTInductor: the archive's serialized file is already compiled
    else:
        options = dict(pt2)  # TorchServe's older form: torch.compile kwargs directly
    backend = options.get("backend")
    if backend is not None and backend not in torch._dynamo.list_backends(exclude_tags=()):
        log.warning("pt2 backend %r is not available (have %s): serving uncompiled",
                    backend, torch._dynamo.list_backends())
        return None
    return options


class BaseHandler:
    # Batches may run through copies of this handler at once, one per thread (batch lanes,
    # modelserve.worker.lanes). Only a class that says so in its own body counts, not its
    # subclasses; an instance takes it back by setting it False.
    thread_safe = True

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device = torch.device("cpu")
        self.initialized = False
        self.context: Any = None
        self.manifest: dict[str, Any] = {}
        self.model_dir: Path | None = None
        # the largest batch the model can take, when it is less than batchSize (a torch.export
        # model with a static batch of 1): the worker reports it and the server batches so
        self.batch_limit: int | None = None

    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        props = context.system_properties
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        self.model_dir = Path(props["model_dir"])
        model = self.manifest.get("model", {})
        serialized, model_file = model.get("serializedFile"), model.get("modelFile")
        self.model = load_model(
            self.model_dir / serialized if serialized else None, self.device,
            model_file=self.model_dir / model_file if model_file else None,
        )
        batch_size = int(props.get("batch_size") or 1)
        if getattr(self.model, "modelserve_static_batch", None) == 1 and batch_size > 1:
            log.warning("the model takes batches of 1 only: serving it with batch size 1, "
                        "not %d", batch_size)
            self.batch_limit = 1
        mapping_file = self.model_dir / "index_to_name.json"
        if mapping_file.is_file():
            self.mapping = load_label_mapping(mapping_file)
        options = compile_options(context.model_yaml_config or {})
        if options is not None:
            self.model = self._compile(options, int(props.get("batch_size") or 1))
            self.thread_safe = False  # compiled code (CUDA graphs most of all): one at a time
        self.initialized = True

    # -- torch.compile (model-config.yaml ``pt2``) --------------------------------------------
    def warmup_input(self, batch_size: int) -> torch.Tensor | None:
        """A batch to compile with; None when the per-sample shape is unknown."""
        options = (self.context.model_yaml_config or {}).get("handler") or {}
        shape = options.get("input_shape") or input_shape(self.model)
        if not shape or any(d is None for d in shape):
            return None
        dtype = getattr(torch, str(options.get("input_dtype", "float32")))
        generator = torch.Generator().manual_seed(0)
        if dtype.is_floating_point:
            return torch.rand(batch_size, *shape, generator=generator).to(dtype)
        return torch.zeros(batch_size, *shape, dtype=dtype)

    def _compile(self, options: dict[str, Any], batch_size: int) -> Any:
        """``torch.compile`` the model and warm it up; the model as it was if that fails."""
        if is_onnx(self.model) or not isinstance(self.model, torch.nn.Module) or isinstance(
                self.model, torch.jit.ScriptModule):
            log.warning("pt2 compile skipped: %s is already compiled or not an nn.Module",
                        type(self.model).__name__)
            return self.model
        try:
            compiled = torch.compile(self.model, **options)
        except Exception as exc:  # bad options: TorchServe proceeds without compiling
            log.warning("torch.compile(%s) failed, serving uncompiled: %s", options, exc)
            return self.model
        # TorchServe's line (BaseHandler.initialize), which its tests and operators look for
        log.info("Compiled model with %s", ", ".join(f"{k} {v}" for k, v in options.items()))
        sizes = [max(batch_size, 2), 1]
        if self.device.type == "cuda" and options.get("mode") in CUDAGRAPH_MODES:
            sizes += range(2, batch_size)  # CUDA graphs are recorded per batch size
        example = self.warmup_input(sizes[0])
        if example is None:
            log.warning("torch.compile(%s): no input shape to warm up with (set "
                        "handler.input_shape): the first requests pay for compiling", options)
            return compiled
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                for size in sizes:
                    batch = example[:size].to(self.device)
                    if size > 1:
                        torch._dynamo.maybe_mark_dynamic(batch, 0)
                    run_model(compiled, batch)
        except Exception as exc:
            log.warning("torch.compile(%s) failed in warm-up, serving uncompiled: %s",
                        options, exc)
            return self.model
        ms = (time.perf_counter() - start) * 1000
        log.info("torch.compile(%s): compiled and warmed up in %.0f ms (batch sizes %s)",
                 options, ms, sizes)
        self.context.metrics.add_time("CompileTime", round(ms, 2))
        return compiled

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = [row.get("data", row.get("body")) for row in data]
        return torch.as_tensor(rows, device=self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            return run_model(self.model, data.to(self.device))

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return data.tolist()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        return self._route_by_headers(data, self._run_pipeline)

    def _run_pipeline(self, data: list[dict[str, Any]]) -> list[Any]:
        start = time.perf_counter()
        batch = self.preprocess(data)
        with model_clock.timing_unless_timed():  # a subclass's inference may not use run_model
            inferred = self.inference(batch)
        output = self.postprocess(inferred)
        self._record_handler_time(start)
        return output

    def _record_handler_time(self, start: float) -> None:
        """TorchServe's ``HandlerTime`` metric (ms) for work begun at ``start``."""
        self.context.metrics.add_time("HandlerTime",
                                      round((time.perf_counter() - start) * 1000, 2))

    # -- TorchServe's describe / explain paths (chosen by request headers) --------------------
    def _route_by_headers(self, data: list[dict[str, Any]],
                          predict: Callable[[list[dict[str, Any]]], list[Any]]) -> list[Any]:
        """TorchServe's routing on the request headers: ``describe`` to ``describe_handle``,
        ``explain`` to ``explain_handle`` (timed as HandlerTime), anything else to
        ``predict``. Handlers that override ``handle`` set ``self.context`` and call this."""
        if self._is_describe():
            return [self.describe_handle()]
        if not self._is_explain():
            return predict(data)
        start = time.perf_counter()
        output = self.explain_handle(self._explain_input(data), data)
        self._record_handler_time(start)
        return output

    def _explain_input(self, data: list[dict[str, Any]]) -> Any:
        """``explain_handle``'s ``data_preprocess``: the batch through ``preprocess``."""
        return self.preprocess(data)

    def _is_describe(self) -> bool:
        return bool(self.context) and self.context.get_request_header(0, "describe") == "True"

    def _is_explain(self) -> bool:
        return bool(self.context) and self.context.get_request_header(0, "explain") == "True"

    def describe_handle(self) -> Any:
        """Customized metadata for ``GET /models/{name}?customized=true``; override it."""
        return None

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> list[Any]:
        """Explanations for ``/explanations/{model}``; handlers that can explain override it."""
        raise PredictionException(
            f"model {self.context.model_name} does not support explanations: its handler "
            f"{type(self).__name__} does not implement explain_handle", 501)
