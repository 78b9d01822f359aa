"""``resnet`` in every other format the workers load, with resnet.mar's weights and options:

- ``resnet_ep``: a torch.export ExportedProgram (.pt2) with a dynamic batch dimension;
- ``resnet_aoti``: that program compiled by AOTInductor for this machine (CUDA if present);
- ``resnet_eager``: ``--model-file`` (``resnet_model.py``) + a state_dict (.pth);
- ``resnet_compile``: the eager model with ``pt2: {compile: {enable: true}}``.

Not part of the default examples: on 2 CPU cores the AOTInductor compile takes ~20 s here
and ``resnet_compile`` compiles for ~50 s at each worker start (see bench/RESULTS.md).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from modelserve.examples import resnet
from modelserve.examples.build import archive_model, serving

FORMATS = ("ep", "aoti", "eager", "compile")
MAX_BATCH = 1024
MODEL_FILE = Path(__file__).with_name("resnet_model.py")


def export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``torch.export`` with a dynamic batch dimension, so the batcher can send any size."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def build_resnet_formats(store: Path, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write resnet_<format>.mar for each of ``formats`` into ``store``; print build times."""
    from modelserve.handlers.runtimes import aoti_compile

    formats = list(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    store.mkdir(parents=True, exist_ok=True)
    model = resnet.build()
    example = torch.randn(2, *resnet.INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    handler = {"input_shape": resnet.INPUT_SHAPE, "image_mode": "RGB", "softmax": True,
               "top_k": 5}
    slow = {**serving(handler), "startupTimeout": 600}
    archives = []
    with tempfile.TemporaryDirectory(prefix="modelserve-formats-") as tmp:
        work = Path(tmp)
        if "ep" in formats or "aoti" in formats:
            start = time.perf_counter()
            program = export_program(model, example, work / "resnet.pt2")
            print(f"resnet: torch.export in {time.perf_counter() - start:.1f} s")
            if "ep" in formats:
                archives.append(archive_model(store, "resnet_ep", program, serving(handler)))
            if "aoti" in formats:
                start = time.perf_counter()
                package = aoti_compile(program, work / "aoti" / "resnet.pt2")
                print(f"resnet: AOTInductor compile in {time.perf_counter() - start:.1f} s")
                archives.append(archive_model(store, "resnet_aoti", package, slow))
        if "eager" in formats or "compile" in formats:
            weights = work / "resnet.pth"
            torch.save(model.state_dict(), weights)
            if "eager" in formats:
                archives.append(archive_model(store, "resnet_eager", weights, serving(handler),
                                              model_file=MODEL_FILE))
            if "compile" in formats:
                config = {**slow, "pt2": {"compile": {"enable": True, "backend": "inductor"}}}
                archives.append(archive_model(store, "resnet_compile", weights, config,
                                              model_file=MODEL_FILE))
    return archives
