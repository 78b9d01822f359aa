"""Benchmark: served throughput and latency vs. the model called directly, in one run.

For each model (``digits``: serving overhead; ``resnet``: compute-bound) it measures
  1. direct in-process inference of the archive's TorchScript model: batched throughput
     (batch = the archive's batchSize) and single-request latency;
  2. the load generator's own ceiling against a trivial endpoint (``trivial_server.py``) and
     against the server's ``GET /ping``: it must sit well above 3.;
  3. the real server (``--workers``, default one, the archive's batch size and delay) under load
     closed-loop at each concurrency, and at fixed arrival rates (open loop, ``--rate``):
     requests/s, p50/p90/p99, errors, mean batch size, the share of the direct ceiling
     (the faster layout of 1.), frontend and worker RSS, PSS of the whole server.

    python bench/serve_bench.py --model-store model_store [--duration 10] [--json]
        [--loadgen wrk|python] [--concurrency 1 8 32 128] [--rate 500 2000] [--workers 2]

The closed-loop rows use wrk when it is installed (``apt-get install wrk``), else the Python
generator in ``loadgen.py``; open-loop rows always use ``loadgen.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wrk  # noqa: E402
from loadgen import LoadResult, build_request, closed_loop, open_loop  # noqa: E402

HOST = "127.0.0.1"
SHAPES = {"digits": (1, 8, 8), "resnet": (3, 64, 64)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def bodies(model: str) -> dict[str, tuple[bytes, str]]:
    """Request bodies per encoding: JSON numbers, and for resnet also a binary .npy."""
    rng = np.random.default_rng(0)
    x = (rng.random(SHAPES[model], dtype=np.float32) * (16 if model == "digits" else 1))
    out = {"json": (json.dumps(np.round(x, 4).ravel().tolist()).encode(), "application/json")}
    if model == "resnet":
        buf = io.BytesIO()
        np.save(buf, x)
        out["npy"] = (buf.getvalue(), "application/x-npy")
    return out


def direct(store: Path, model: str, batch: int, seconds: float = 5.0) -> dict[str, float]:
    """The model's own speed: TorchScript from the archive, inference_mode, two layouts of
    the cores: one stream of batches with every core as an intra-op thread, and one stream
    per core with one thread each (what N single-thread workers do). The faster is the
    ceiling the served numbers are compared with."""
    import torch

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(store / f"{model}.mar") as zf:
        zf.extract(f"{model}.pt", tmp)
        net = torch.jit.load(f"{tmp}/{model}.pt").eval()

    def timed(x: torch.Tensor, seconds: float) -> list[float]:
        times = []
        with torch.inference_mode():
            for _ in range(5):
                net(x)
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                torch.softmax(net(x), 1)
                times.append(time.perf_counter() - t0)
        return times

    results: dict[str, float] = {}
    torch.set_num_threads(cores)
    for size, key in ((batch, "batched"), (1, "single")):
        times = timed(torch.rand(size, *SHAPES[model]), seconds / 3)
        results[f"{key}_rps"] = size * len(times) / sum(times)
        results[f"{key}_p50_ms"] = sorted(times)[len(times) // 2] * 1000
    torch.set_num_threads(1)  # each new thread starts with one intra-op thread
    x = torch.rand(batch, *SHAPES[model])
    with ThreadPoolExecutor(cores) as pool:
        streams = [f.result() for f in [pool.submit(timed, x, seconds / 3) for _ in range(cores)]]
    results["streams_rps"] = sum(batch * len(t) / sum(t) for t in streams)
    results["ceiling_rps"] = max(results["batched_rps"], results["streams_rps"])
    return results


def pss_mb(pids: list[int]) -> float:
    """Sum of PSS over processes: shared libraries (torch) count once across them."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def scale(port: int, name: str, workers: int) -> None:
    """TorchServe's scale call (modelserve takes it too); synchronous waits for the workers."""
    url = (f"http://{HOST}:{port}/models/{name}?min_worker={workers}&max_worker={workers}"
           "&synchronous=true")
    urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=300).read()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: the worker zygote and the workers it forked too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.extend(children.get(current, []))
        todo.extend(children.get(current, []))
    return out


class ServerUnderTest:
    def __init__(self, store: Path, model: str, workdir: Path,
                 extra: dict | None = None, workers: int = 1) -> None:
        self.ports = [free_port() for _ in range(4)]
        config = {
            "inference_port": self.ports[0], "management_port": self.ports[1],
            "metrics_port": self.ports[2], "grpc_inference_port": self.ports[3],
            "model_store": str(store), "load_models": [f"{model}={model}.mar"],
            "workdir": str(workdir / "work"), "log_level": "warning",
            "disable_token_auth": True, "model_snapshot": False, **(extra or {}),
        }
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve", "start", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "Press Ctrl-C" in line:
                break
        else:
            raise RuntimeError("server did not start")
        if workers != 1:
            scale(self.ports[1], model, workers)

    def batch_mean(self, model: str) -> tuple[float, float]:
        text = urllib.request.urlopen(f"http://{HOST}:{self.ports[2]}/metrics").read().decode()
        values = dict(re.findall(
            rf'modelserve_batch_size_(sum|count){{model_name="{model}",model_version="[^"]+"}} '
            r"(\S+)", text))
        return float(values.get("sum", 0)), float(values.get("count", 0))

    def memory(self) -> dict[str, float]:
        """RSS of the frontend and of the rest (zygote + workers: shared pages counted in
        each), and PSS of the whole tree (shared pages counted once)."""
        others = descendants(self.proc.pid)
        return {"frontend_rss_mb": rss_mb(self.proc.pid),
                "workers_rss_mb": sum(rss_mb(p) for p in others),
                "server_pss_mb": pss_mb([self.proc.pid, *others])}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


LOADGEN = "wrk" if wrk.available() else "python"


def run_load(port: int, path: str, body: bytes, content_type: str, concurrency: int,
             duration: float, loadgen: str | None = None) -> LoadResult | wrk.WrkResult:
    """Closed loop with ``loadgen`` (default: wrk when installed)."""
    if (loadgen or LOADGEN) == "wrk":
        return wrk.run(f"http://{HOST}:{port}{path}", body, content_type, concurrency, duration)
    request = build_request(HOST, port, "POST" if body else "GET", path, body, content_type)
    return asyncio.run(closed_loop(HOST, port, request, concurrency, duration))


def run_rate(port: int, path: str, body: bytes, content_type: str, rate: float,
             duration: float) -> LoadResult:
    request = build_request(HOST, port, "POST", path, body, content_type)
    return asyncio.run(open_loop(HOST, port, request, rate, duration))


def loadgen_ceiling(duration: float, loadgen: str | None = None) -> LoadResult | wrk.WrkResult:
    """The load generator against ``trivial_server.py``: what it can drive at all."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "trivial_server.py"),
                             str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return run_load(port, "/", b"", "", 32, duration, loadgen)
    finally:
        proc.kill()
        proc.wait()


def row(label: str, r: LoadResult | wrk.WrkResult,
        batch: float | None = None) -> dict[str, object]:
    return {
        "case": label, "concurrency": r.concurrency, "rps": round(r.rps, 1),
        "p50_ms": round(r.percentile(50) * 1000, 2), "p90_ms": round(r.percentile(90) * 1000, 2),
        "p99_ms": round(r.percentile(99) * 1000, 2), "errors": r.errors,
        "mean_batch": None if batch is None else round(batch, 2),
    }


def bench_model(store: Path, model: str, concurrencies: list[int], rates: list[float],
                duration: float, workers: int = 1) -> dict:
    batch_size = yaml.safe_load(
        zipfile.ZipFile(store / f"{model}.mar").read(f"{model}-model-config.yaml"))["batchSize"]
    report: dict = {"model": model, "direct": direct(store, model, batch_size), "rows": [],
                    "workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerUnderTest(store, model, Path(tmp), workers=workers)
        try:
            report["memory_idle"] = server.memory()
            port = server.ports[0]
            report["rows"].append(row(f"{LOADGEN}: trivial endpoint (ceiling)",
                                      loadgen_ceiling(duration / 2)))
            ping = run_load(port, "/ping", b"", "", 32, duration / 2)
            report["rows"].append(row(f"{LOADGEN}: GET /ping", ping))
            for encoding, (body, ctype) in bodies(model).items():
                path = f"/predictions/{model}"
                loads = [("closed", c) for c in concurrencies] + [("open", r) for r in rates]
                for kind, value in loads:
                    before = server.batch_mean(model)
                    if kind == "closed":
                        label = f"{model} {encoding}"
                        r = run_load(port, path, body, ctype, int(value), duration)
                    else:
                        label = f"{model} {encoding} @{value:g}/s open"
                        r = run_rate(port, path, body, ctype, value, duration)
                    after = server.batch_mean(model)
                    batches = after[1] - before[1]
                    mean = (after[0] - before[0]) / batches if batches else None
                    report["rows"].append(row(label, r, mean))
            report["memory_loaded"] = server.memory()
        finally:
            server.stop()
    return report


def print_report(report: dict) -> None:
    d = report["direct"]
    print(f"\n== {report['model']} ({report['workers']} worker(s)) ==")
    print(f"direct TorchScript: batched {d['batched_rps']:.0f} samples/s (all cores, one "
          f"stream), {d['streams_rps']:.0f} samples/s (one stream per core); single request "
          f"p50 {d['single_p50_ms']:.3f} ms ({d['single_rps']:.0f}/s)")
    print(f"{'case':40} {'c':>4} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'batch':>6} {'of ceiling':>7}")
    for r in report["rows"]:
        batch = "" if r["mean_batch"] is None else f"{r['mean_batch']:.2f}"
        share = "" if r["mean_batch"] is None else f"{r['rps'] / d['ceiling_rps']:.0%}"
        print(f"{r['case']:40} {r['concurrency']:>4} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} "
              f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6} {batch:>6} "
              f"{share:>10}")
    idle, loaded = report["memory_idle"], report["memory_loaded"]
    print(f"RSS idle: frontend {idle['frontend_rss_mb']:.0f} MB, zygote + workers "
          f"{idle['workers_rss_mb']:.0f} MB, server PSS {idle['server_pss_mb']:.0f} MB; "
          f"after load: frontend {loaded['frontend_rss_mb']:.0f} MB, zygote + workers "
          f"{loaded['workers_rss_mb']:.0f} MB, server PSS {loaded['server_pss_mb']:.0f} MB")


def main() -> None:
    global LOADGEN
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--models", nargs="+", default=["digits", "resnet"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128],
                        help="closed-loop connection counts")
    parser.add_argument("--rate", type=float, nargs="*", default=[],
                        help="open-loop arrival rates (requests/s), Python generator")
    parser.add_argument("--loadgen", choices=["wrk", "python"], default=LOADGEN,
                        help="closed-loop load generator (default: wrk when installed)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load step")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers per model (threads each: cores / workers)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    LOADGEN = args.loadgen
    reports = [bench_model(args.model_store.resolve(), m, args.concurrency, args.rate,
                           args.duration, args.workers) for m in args.models]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for report in reports:
            print_report(report)


if __name__ == "__main__":
    main()
