"""Benchmark: resnet in every model format, called directly in-process at batch 1 and 8.

Each archive is loaded the way a worker loads it (``tensor_handler`` initialised with a worker
``Context``, so torch.compile's warm-up is included in its load time), then timed through
``handler.inference`` on all cores: TorchScript, torch.export ExportedProgram, AOTInductor,
ONNX Runtime, eager, and eager + torch.compile. Answers are checked against eager.
``--served`` adds the real server at concurrency 8 with .npy bodies (bench/serve_bench.py).

    python bench/formats_bench.py --model-store model_store [--seconds 3] [--served] [--json]

Archives missing from the store are built first (``modelserve examples --formats``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FORMATS = {  # label -> archive
    "TorchScript": "resnet",
    "ExportedProgram": "resnet_ep",
    "AOTInductor": "resnet_aoti",
    "ONNX Runtime": "resnet_onnx",
    "eager": "resnet_eager",
    "eager + torch.compile": "resnet_compile",
}
BATCHES = (1, 8)


def ensure_archives(store: Path) -> None:
    from modelserve.examples.build import build_resnet
    from modelserve.examples.formats import FORMATS as BUILT
    from modelserve.examples.formats import build_resnet_formats

    missing = [f for f in BUILT if not (store / f"resnet_{f}.mar").is_file()]
    if missing:
        build_resnet_formats(store, missing)
    if not all((store / f"{n}.mar").is_file() for n in ("resnet", "resnet_onnx")):
        with tempfile.TemporaryDirectory() as tmp:
            build_resnet(store, Path(tmp))


def load(store: Path, name: str, work: Path) -> tuple[Any, float]:
    """The archive's tensor_handler, initialised as a worker does; and how long that took."""
    from modelserve.archive import open_archive
    from modelserve.handlers.tensor_handler import TensorHandler
    from modelserve.worker.context import Context

    archive = open_archive(store / f"{name}.mar", work)
    context = Context(
        model_name=name, model_dir=str(archive.model_dir),
        manifest=archive.manifest.to_json_dict(), batch_size=max(BATCHES), gpu=None,
        model_yaml_config=archive.model_yaml_config,
    )
    start = time.perf_counter()
    handler = TensorHandler()
    handler.initialize(context)
    return handler, (time.perf_counter() - start) * 1000


def time_batches(handler: Any, inputs: Any, seconds: float) -> dict[int, dict[str, float]]:
    out = {}
    for size in BATCHES:
        x = inputs[:size]
        for _ in range(3):
            handler.inference(x)
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            handler.inference(x)
            times.append(time.perf_counter() - t0)
        times.sort()
        out[size] = {"p50_ms": times[len(times) // 2] * 1000,
                     "samples_per_s": size * len(times) / sum(times)}
    return out


def served_c8(store: Path, name: str, duration: float) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_bench import ServerUnderTest, bodies, run_load

    body, ctype = bodies("resnet")["npy"]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerUnderTest(store, name, Path(tmp))
        try:
            r = run_load(server.ports[0], f"/predictions/{name}", body, ctype, 8, duration)
        finally:
            server.stop()
    return {"rps": r.rps, "p50_ms": r.percentile(50) * 1000, "errors": r.errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--seconds", type=float, default=3.0, help="per format and batch size")
    p.add_argument("--rounds", type=int, default=2, help="best p50 of this many rounds")
    p.add_argument("--served", action="store_true", help="also serve each format at c=8")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ensure_archives(args.model_store)
    inputs = torch.rand(max(BATCHES), 3, 64, 64, generator=torch.Generator().manual_seed(0))
    results: dict[str, dict] = {label: {} for label in FORMATS}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for label, name in FORMATS.items():
                handler, load_ms = load(args.model_store, name, Path(tmp))
                timing = time_batches(handler, inputs, args.seconds)
                entry = results[label]
                entry.setdefault("load_ms", load_ms)
                for size, t in timing.items():
                    best = entry.get(size)
                    if best is None or t["p50_ms"] < best["p50_ms"]:
                        entry[size] = t
                if round_ == 0:
                    out = handler.inference(inputs).float()
                    reference = out if label == "eager" or reference is None else reference
                    entry["output"] = out
                del handler
                gc.collect()
        for entry in results.values():
            entry["max_abs_diff"] = float((entry.pop("output") - reference).abs().max())
    if args.served:
        for label, name in FORMATS.items():
            results[label]["served_c8"] = served_c8(args.model_store, name, 5.0)

    if args.json:
        print(json.dumps({k: {str(kk): vv for kk, vv in v.items()} for k, v in results.items()},
                         indent=2))
        return
    cores = len(os.sched_getaffinity(0))
    print(f"resnet (3x64x64), direct, {cores} cores, torch {torch.__version__}; best p50 of "
          f"{args.rounds} rounds of {args.seconds:g} s")
    served = " served c=8 req/s |" if args.served else ""
    print(f"| format | load ms | b1 p50 ms | b1 samples/s | b8 p50 ms | b8 samples/s | "
          f"max diff vs eager |{served}")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.served else ""))
    for label, e in results.items():
        extra = f" {e['served_c8']['rps']:.1f} |" if args.served else ""
        print(f"| {label} | {e['load_ms']:.0f} | {e[1]['p50_ms']:.2f} | "
              f"{e[1]['samples_per_s']:.0f} | {e[8]['p50_ms']:.2f} | "
              f"{e[8]['samples_per_s']:.0f} | {e['max_abs_diff']:.1e} |{extra}")


if __name__ == "__main__":
    main()
