"""Load a serialized model in whichever format it is, and run a batch through it.

The format comes from the file's contents where the name is ambiguous (``.pt``, ``.pt2``):

- ``onnx``: ``.onnx``, an onnxruntime ``InferenceSession`` (CUDA provider on a GPU worker).
- ``eager``: the manifest names a ``modelFile`` (TorchServe's rule): the one ``nn.Module``
  class it defines, weights from the serialized state_dict (``.pt``/``.pth``), if any.
- ``torchscript``: any other ``.pt``/``.pth``/``.ts``: a zip holding ``code/``.
- ``exported_program``: a ``torch.export.save`` zip (``models/*.json``), run through
  ``program.module()``; export it with a ``torch.export.Dim`` batch so batching works.
- ``aoti``: an AOTInductor package (a zip holding ``data/aotinductor/``), compiled for one
  device; or TorchServe's older ``.so`` from ``torch._export.aot_compile``.
"""

from __future__ import annotations

import json
import logging
import platform
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserve import model_clock
from modelserve.handlers.util import list_classes_from_module
from modelserve.pyfile import import_file

log = logging.getLogger(__name__)

ONNX_SUFFIXES = {".onnx"}
TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".torchscript", ".ts"}
PT2_SUFFIXES = {".pt2"}
FORMATS = ("onnx", "torchscript", "eager", "exported_program", "aoti", "aoti_so")
_CPU_ISA_ORDER = {"DEFAULT": 0, "": 0, "AVX2": 1, "AVX512": 2}


def detect_format(path: Path | None, model_file: Path | None = None) -> str:
    """One of FORMATS for ``path``: by its contents, since .pt and .pt2 each hold two."""
    if model_file is not None:
        return "eager"
    if path is None:
        raise ValueError("the archive has no serializedFile to load (and no modelFile)")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix == ".so":
        return "aoti_so"
    members = _zip_members(path)
    if members is not None:
        parts = [m.split("/") for m in members]
        if any("aotinductor" in p[:-1] for p in parts):
            return "aoti"
        if any(p[-2:-1] == ["models"] and p[-1].endswith(".json") for p in parts) or any(
                p[-1] == "serialized_exported_program.json" for p in parts):  # torch < 2.6
            return "exported_program"
        if any("code" in p[:-1] or p[-1] == "constants.pkl" for p in parts):
            return "torchscript"
        if suffix in TORCHSCRIPT_SUFFIXES and any(p[-1] == "data.pkl" for p in parts):
            raise ValueError(
                f"'{path.name}' is a torch.save pickle (a state_dict?), not TorchScript: "
                f"archive it with --model-file naming the Python file of its model class"
            )
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"  # let torch.jit.load say what is wrong with it
    raise ValueError(
        f"cannot tell the format of '{path.name}': expected ONNX (.onnx), TorchScript "
        f"(.pt/.pth), a torch.export or AOTInductor .pt2, or a state_dict with --model-file"
    )


def _zip_members(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def load_model(path: Path | None, device: torch.device, model_file: Path | None = None) -> Any:
    """The runtime object for the serialized file (and model file, for eager models)."""
    fmt = detect_format(path, model_file)
    log.info("loading %s as %s on %s", path.name if path else model_file, fmt, device)
    if fmt == "eager":
        assert model_file is not None
        return load_eager(model_file, path, device)
    assert path is not None
    if fmt == "onnx":
        return _load_onnx(path, device)
    if fmt == "exported_program":
        return _load_exported(path, device)
    if fmt == "aoti":
        return _load_aoti(path, device)
    if fmt == "aoti_so":
        return _load_aoti_so(path, device)
    model = torch.jit.load(str(path), map_location=device)
    model.eval()
    return model


# -- eager: model file + state_dict -----------------------------------------------------------
def model_class(model_file: Path) -> type[torch.nn.Module]:
    """The model file's one ``nn.Module`` class (TorchServe: exactly one class defined)."""
    module = import_file(model_file)
    if module is None:
        raise ValueError(f"cannot import model file {model_file.name}")
    classes = list_classes_from_module(module)
    if len(classes) != 1:
        classes = [c for c in classes if issubclass(c, torch.nn.Module)]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ValueError(
            f"model file {model_file.name} must define exactly one torch.nn.Module class; "
            f"found {found}"
        )
    return classes[0]


def load_eager(model_file: Path, weights: Path | None, device: torch.device) -> torch.nn.Module:
    """Instantiate the class without arguments and load the state_dict, as TorchServe does."""
    model = model_class(model_file)()
    if weights is not None:
        state = torch.load(str(weights), map_location=device, weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(
                f"'{weights.name}' holds a {type(state).__name__}, not a state_dict: save "
                f"model.state_dict() for eager archives"
            )
        model.load_state_dict(state)
    return model.to(device).eval()


# -- torch.export and AOTInductor -------------------------------------------------------------
def _load_exported(path: Path, device: torch.device) -> torch.nn.Module:
    program = torch.export.load(str(path))
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    module = program.module()
    dims = _exported_input_dims(program)
    if dims and isinstance(dims[0], int):
        log.warning("%s was exported with a static batch of %d: other batch sizes fail; "
                    "export with dynamic_shapes={...: {0: torch.export.Dim('batch')}}",
                    path.name, dims[0])
        module.modelserve_static_batch = dims[0]
    module.modelserve_input_shape = _sample_shape(dims)
    return module


def _exported_input_dims(program: Any) -> list[Any] | None:
    """The first user input's dims: ints, or SymInts where the export made them dynamic."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            return list(getattr(node.meta.get("val"), "shape", ()))
    return None


def _sample_shape(dims: list[Any] | None) -> list[int] | None:
    rest = (dims or [])[1:]
    return [int(d) for d in rest] if rest and all(isinstance(d, int) for d in rest) else None


class AotiModel:
    """An AOTInductor package: callable on a batch, which it moves to its compiled device."""

    def __init__(self, runner: Any, device: torch.device, metadata: dict[str, str]) -> None:
        self.runner = runner
        self.device = device
        self.metadata = metadata
        shape = metadata.get("modelserve_input_shape")
        self.modelserve_input_shape = json.loads(shape) if shape else None

    def __call__(self, batch: torch.Tensor) -> Any:
        return self.runner(batch.to(self.device))


def aoti_metadata(path: Path) -> dict[str, str]:
    """The package's compile-time metadata (device, platform, CPU ISA) without loading it."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if "/aotinductor/" in f"/{name}" and name.endswith("_metadata.json"):
                data = json.loads(zf.read(name))
                if "AOTI_DEVICE_KEY" in data:
                    return {str(k): str(v) for k, v in data.items()}
    return {}


def _check_aoti_host(name: str, meta: dict[str, str], device: torch.device) -> torch.device:
    """The device the package runs on here; refuse what would crash instead of failing."""
    built = meta.get("AOTI_DEVICE_KEY", "cpu")
    machine = meta.get("AOTI_MACHINE")
    if machine and machine != platform.machine():
        raise RuntimeError(f"{name} was compiled for {machine}, this is {platform.machine()}")
    if built == "cpu":
        isa, here = meta.get("AOTI_CPU_ISA", ""), torch.backends.cpu.get_cpu_capability()
        if _CPU_ISA_ORDER.get(isa, 0) > _CPU_ISA_ORDER.get(here, 0):
            raise RuntimeError(f"{name} was compiled for {isa}; this CPU has {here}")
        if device.type != "cpu":
            log.warning("%s was compiled for CPU: it runs on the CPU, not %s", name, device)
        return torch.device("cpu")
    if device.type != built:
        raise RuntimeError(
            f"{name} is an AOTInductor package compiled for {built}, but this worker runs "
            f"on {device}: rebuild it on such a machine (modelserve archive --aot-compile) "
            f"or archive the ExportedProgram instead"
        )
    return device


def _load_aoti(path: Path, device: torch.device) -> AotiModel:
    meta = aoti_metadata(path)
    run_on = _check_aoti_host(path.name, meta, device)
    if run_on.type == "cuda":
        torch.cuda.set_device(run_on)
    runner = torch._inductor.aoti_load_package(
        str(path), device_index=run_on.index if run_on.index is not None else -1)
    get_metadata = getattr(runner, "get_metadata", dict)  # torch >= 2.7
    return AotiModel(runner, run_on, {**meta, **get_metadata()})


def _load_aoti_so(path: Path, device: torch.device) -> AotiModel:
    """TorchServe's ``.so`` (``torch._export.aot_compile``, deprecated by torch)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    runner = torch._export.aot_load(str(path), device.type)
    return AotiModel(runner, device, {})


def aoti_compile(program_path: Path, package_path: Path, device: str | None = None) -> Path:
    """AOTInductor-compile an ExportedProgram .pt2 for this machine (CUDA if present)."""
    if detect_format(program_path) != "exported_program":
        raise ValueError(f"{program_path.name} is not a torch.export ExportedProgram .pt2")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    program = torch.export.load(str(program_path))
    if device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    metadata = {}
    shape = _sample_shape(_exported_input_dims(program))
    if shape is not None:
        metadata["modelserve_input_shape"] = json.dumps(shape)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    out = torch._inductor.aoti_compile_and_package(
        program, package_path=str(package_path),
        inductor_configs={"aot_inductor.metadata": metadata},
    )
    return Path(out)


# -- ONNX -------------------------------------------------------------------------------------
def _load_onnx(path: Path, device: torch.device) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def is_onnx(model: Any) -> bool:
    return type(model).__name__ == "InferenceSession"


def input_shape(model: Any) -> list[int | None] | None:
    """Per-sample input shape (batch dimension dropped) from the model's own signature:
    ONNX inputs, an ExportedProgram's example, or AOTInductor metadata."""
    if is_onnx(model):
        dims = model.get_inputs()[0].shape[1:]
        return [d if isinstance(d, int) else None for d in dims]
    shape = getattr(model, "modelserve_input_shape", None)
    return list(shape) if shape else None


def run_model(model: Any, batch: torch.Tensor) -> torch.Tensor:
    """One forward pass; the caller holds ``torch.inference_mode``."""
    if is_onnx(model):
        feed = {model.get_inputs()[0].name: np.ascontiguousarray(batch.cpu().numpy())}
        with model_clock.timing():
            out = model.run(None, feed)[0]
        return torch.from_numpy(out)
    with model_clock.timing():
        return model(batch)


# -- OIP v2: named tensors in and out ----------------------------------------------------------
_ONNX_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def onnx_signature(session: Any) -> dict[str, Any]:
    """The ONNX graph's own inputs and outputs; symbolic dimensions are -1."""
    def specs(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": _ONNX_TYPES.get(t.type, t.type),
                 "shape": [d if isinstance(d, int) else -1 for d in t.shape]} for t in items]

    return {"platform": "onnxruntime_onnx", "inputs": specs(session.get_inputs()),
            "outputs": specs(session.get_outputs())}


def platform_of(model: Any) -> str:
    """Triton's platform names where one fits (TorchScript is ``pytorch_libtorch``)."""
    if is_onnx(model):
        return "onnxruntime_onnx"
    if isinstance(model, torch.jit.ScriptModule):
        return "pytorch_libtorch"
    return "pytorch_torch_export" if hasattr(model, "modelserve_input_shape") else "pytorch"


def output_names(outputs: Any, names: list[str]) -> list[str]:
    """Names for a model's positional outputs: the signature's, else ``output``/``output__i``."""
    if len(names) >= len(outputs):
        return names[:len(outputs)]
    return ["output"] if len(outputs) == 1 else [f"output__{i}" for i in range(len(outputs))]


def run_named(model: Any, feeds: dict[str, np.ndarray], order: list[str],
              names: list[str], device: torch.device) -> dict[str, np.ndarray]:
    """One forward pass on named inputs (positional for torch, in ``order``); named numpy
    outputs. The caller holds ``torch.inference_mode``."""
    if is_onnx(model):
        with model_clock.timing():
            values = model.run(None, feeds)
        return dict(zip([o.name for o in model.get_outputs()], values))
    # frombuffer views of the request bytes are read-only: torch wants writable memory
    args = [torch.from_numpy(np.require(feeds[n], requirements=["C", "W"])).to(device)
            for n in order]
    with model_clock.timing():
        out = model(*args)
    if isinstance(out, Mapping):
        return {str(k): v.detach().cpu().numpy() for k, v in out.items()}
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return {name: v.detach().cpu().numpy() for name, v in zip(output_names(outs, names), outs)}
