r"""LitServe and modelserve side by side: the same TorchScript models, batching, workers and load.

LitServe (``litserve`` from PyPI, in a venv this script creates: bench/out/litserve-venv) serves
each example's TorchScript model with ``bench/litserve_app.py``, which does the work of
modelserve's built-in ``tensor_handler`` (JSON numbers in, softmax top-k with labels out), with
its batching on at modelserve's settings (``max_batch_size`` 8, ``batch_timeout`` 5 ms) and the
same number of inference worker processes (``--workers``, default 1; LitServe adds one API
server process per worker, its default). LitServe runs twice: as shipped, and with
``fast_queue`` (ZeroMQ) and ``OMP_WAIT_POLICY=PASSIVE`` (what modelserve's workers set); the
ratios use the better of the two at each concurrency. modelserve serves the example archives
with JSON bodies and with binary ones (``.npy``; LitServe reads JSON or forms only).

The load is wrk's (``apt-get install wrk``), closed loop at each concurrency, in interleaved
rounds (``--rounds``; medians reported). Memory is PSS summed over each server's whole
process tree, idle (after start) and loaded (after the last step). For c=1 the table also
gives the direct model call (TorchScript in this process, one request) and each server's p50
over it.

    .venv/bin/python bench/compare_litserve.py --model-store model_store [--models digits resnet] \
        [--concurrency 1 8 32 128] [--duration 10] [--rounds 3] [--workers 1] [--record]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_md  # noqa: E402
import serve_bench  # noqa: E402
from compare_torchserve import medians, start_modelserve, stop, tree_pss_mb  # noqa: E402
from serve_bench import HOST, SHAPES, direct, free_port, run_load, scale  # noqa: E402

HERE = Path(__file__).resolve().parent
VENV = HERE / "out" / "litserve-venv"
PACKAGES = ["torch==2.13.0", "litserve==0.2.19", "numpy"]
TOP_K = {"digits": 1, "resnet": 5}
BATCH, DELAY_S = 8, 0.005  # the example archives' batchSize and maxBatchDelay
LITSERVE_AS_SHIPPED = "litserve"
LITSERVE_TUNED = "litserve fast_queue, OMP PASSIVE"


def ensure_venv(venv: Path = VENV) -> Path:
    """LitServe's venv, made once (a stamp names what it holds); its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".litserve-installed"
    if stamp.is_file() and stamp.read_text().split() == PACKAGES:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    stamp.write_text("\n".join(PACKAGES) + "\n")
    return python


def bodies(model: str) -> dict[str, tuple[bytes, str]]:
    """The same input as JSON numbers (what serve_bench sends) and as a binary .npy."""
    rng = np.random.default_rng(0)
    x = rng.random(SHAPES[model], dtype=np.float32) * (16 if model == "digits" else 1)
    x = np.round(x, 4).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    return {"json": (json.dumps(x.ravel().tolist()).encode(), "application/json"),
            "npy": (buf.getvalue(), "application/x-npy")}


def extract(store: Path, model: str, work: Path) -> tuple[Path, Path | None]:
    """The archive's TorchScript file and labels (if any), for LitServe to load."""
    with zipfile.ZipFile(store / f"{model}.mar") as zf:
        zf.extract(f"{model}.pt", work)
        has_labels = "index_to_name.json" in zf.namelist()
        if has_labels:
            zf.extract("index_to_name.json", work)
    return work / f"{model}.pt", (work / "index_to_name.json") if has_labels else None


def start_litserve(python: Path, store: Path, model: str, work: Path, workers: int,
                   tuned: bool) -> tuple[subprocess.Popen, int]:
    folder = work / f"litserve-{model}"
    folder.mkdir(exist_ok=True)
    pt, labels = extract(store, model, folder)
    port = free_port()
    config = folder / "config.json"
    config.write_text(json.dumps({
        "model": str(pt), "labels": str(labels) if labels else None,
        "shape": SHAPES[model], "top_k": TOP_K[model], "port": port,
        "max_batch_size": BATCH, "batch_timeout": DELAY_S, "workers": workers,
        "fast_queue": tuned, "timeout": 120}))
    env = {**os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if tuned else {})}
    if workers > 1:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
    proc = subprocess.Popen([str(python), str(HERE / "litserve_app.py"), str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=folder, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LitServe exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError("LitServe did not become healthy in 180 s")


def check_answer(port: int, path: str, body: bytes, ctype: str) -> None:
    """One request before the load: a server that answers errors is not measured."""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body,
                                     headers={"Content-Type": ctype})
    with urllib.request.urlopen(request, timeout=60) as r:
        answer = json.loads(r.read())
    assert "probability" in json.dumps(answer), answer


def measure(name: str, proc: subprocess.Popen, port: int, path: str, model: str,
            encoding: str, concurrencies: list[int], duration: float) -> list[dict]:
    body, ctype = bodies(model)[encoding]
    check_answer(port, path, body, ctype)
    time.sleep(2)  # let start-up work settle before measuring idle memory
    idle = tree_pss_mb(proc.pid)
    rows = []
    for c in concurrencies:
        r = run_load(port, path, body, ctype, c, duration)
        rows.append({"server": name, "model": model, "c": c, "rps": r.rps,
                     "p50": r.percentile(50) * 1e3, "p99": r.percentile(99) * 1e3,
                     "errors": r.errors, "idle_pss_mb": idle, "pss_mb": tree_pss_mb(proc.pid)})
    return rows


def run_all(args: argparse.Namespace) -> list[dict]:
    python = ensure_venv()
    store = args.model_store.resolve()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="litserve-compare-") as tmp:
        work = Path(tmp)
        for round_, model in itertools.product(range(args.rounds), args.models):
            runs = [(LITSERVE_AS_SHIPPED, False, "json"), (LITSERVE_TUNED, True, "json"),
                    ("modelserve json", None, "json"), ("modelserve npy", None, "npy")]
            for name, tuned, encoding in runs:
                if tuned is None:
                    proc, ports = start_modelserve(store, [f"{model}.mar"], work)
                    port, path = ports[0], f"/predictions/{model}"
                else:
                    proc, port = start_litserve(python, store, model, work, args.workers,
                                                tuned)
                    ports, path = [], "/predict"
                try:
                    if tuned is None and args.workers != 1:
                        scale(ports[1], model, args.workers)
                    rows += [{**r, "round": round_} for r in measure(
                        name, proc, port, path, model, encoding, args.concurrency,
                        args.duration)]
                finally:
                    stop(proc)
                print(f"round {round_} {model} {name}: done", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict], direct_p50: dict[str, float]) -> str:
    lines = [f"{'server':34} {'model':7} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'err':>5} {'PSS idle':>9} {'PSS load':>9}  rounds req/s"]
    for r in rows:
        lines.append(f"{r['server']:34} {r['model']:7} {r['c']:>3} {r['rps']:>8.1f} "
                     f"{r['p50']:>8.2f} {r['p99']:>8.2f} {r['errors']:>5} "
                     f"{r['idle_pss_mb']:>8.0f}M {r['pss_mb']:>8.0f}M  "
                     f"{' / '.join(map(str, r.get('rounds', [])))}"
                     f"{'  (no answer within the step)' if not r['rps'] else ''}")
    best: dict[tuple[str, int], dict] = {}
    for r in rows:  # the better LitServe configuration is the baseline
        key = (r["model"], r["c"])
        if r["server"].startswith("litserve") and r["rps"] > best.get(key, {}).get("rps", -1):
            best[key] = r
    lines.append("\nmodelserve vs the better LitServe row (goals at c=32: >= 1.5x req/s, "
                 "<= 0.6x p99; PSS <= 1.0x):")
    for r in rows:
        ls = best.get((r["model"], r["c"]))
        if not ls or r["server"].startswith("litserve") or not ls["rps"]:
            continue
        rps, p99 = r["rps"] / ls["rps"], r["p99"] / ls["p99"]
        verdict = ""
        if r["c"] == 32:
            verdict = "  goal " + ("met" if rps >= 1.5 and p99 <= 0.6 else "MISSED")
        lines.append(f"  {r['server']:18} {r['model']:7} c={r['c']:<3} {rps:5.2f}x req/s, "
                     f"{p99:5.2f}x p99, PSS idle {r['idle_pss_mb'] / ls['idle_pss_mb']:.2f}x, "
                     f"loaded {r['pss_mb'] / ls['pss_mb']:.2f}x{verdict}")
    for model, p50 in direct_p50.items():
        lines.append(f"\n{model} direct call p50 {p50:.3f} ms; added at c=1 (p50 - direct):")
        for r in rows:
            if r["model"] == model and r["c"] == 1:
                added = r["p50"] - p50
                goal = "" if model != "digits" or not r["server"].startswith("modelserve") \
                    else ("  goal <= 0.3 ms " + ("met" if added <= 0.3 else "MISSED"))
                lines.append(f"  {r['server']:34} {added:6.3f} ms{goal}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--models", nargs="+", default=["digits", "resnet"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every server this many times, interleaved; report medians")
    parser.add_argument("--workers", type=int, default=1, help="inference workers per server")
    parser.add_argument("--loadgen", choices=["wrk", "python"], default=serve_bench.LOADGEN)
    parser.add_argument("--json", action="store_true", help="print every round's rows")
    parser.add_argument("--record", action="store_true",
                        help="append the table to bench/RESULTS.md (quiet machine only)")
    args = parser.parse_args()
    serve_bench.LOADGEN = args.loadgen
    if args.loadgen != "wrk":
        print("warning: wrk is not installed (apt-get install wrk): the Python generator's "
              "own cost is in these numbers", file=sys.stderr)
    direct_p50 = {m: direct(args.model_store.resolve(), m, BATCH)["single_p50_ms"]
                  for m in args.models}
    rows = run_all(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    text = report(medians(rows), direct_p50)
    print(text)
    if args.record:
        results_md.record(
            "LitServe 0.2.19 side by side (issue 22)", [text],
            f"One worker process per model on each server (`--workers {args.workers}`), batch "
            f"{BATCH}, delay {DELAY_S * 1e3:g} ms, wrk closed loop, medians of "
            f"{args.rounds} interleaved rounds; PSS over each whole process tree.")


if __name__ == "__main__":
    main()
