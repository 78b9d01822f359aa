"""Benchmark: autoscaling (docs/autoscaling.md), the numbers issue 29 asks for.

One server with the examples ``resnet`` (scaled between 1 and ``--max-workers``) and
``digits`` beside it, both with the archives' batching:

  1. sweep: resnet at each fixed worker count 1..max (the scale API, min = max), closed loop
     at ``--concurrency``: the best fixed count and its throughput;
  2. step: autoscaled (min 1, max ``--max-workers``), c=1 then c=``--concurrency``: how long
     until the worker count rises (decided, and ready), the throughput it ends at against
     the best fixed count (issue: within 10 %), errors (issue: 0);
  3. load removed: how long until resnet is back at minWorkers (after the cool-down), and
     the PSS of the server's process tree against its idle PSS before the step (issue:
     within 10 %);
  4. both models at once: each one's throughput against its solo throughput (issue: each at
     least 40 %);
  5. minWorkers 0: resnet with min 0, max 1: the PSS of its workers once idle (issue: 0), and
     the first request after each idle spell: its latency, and that none fails.

    .venv/bin/python bench/autoscale.py --model-store model_store [--duration 10]
        [--cool-down 10] [--concurrency 32] [--max-workers 4] [--batch-threads 1] [--record]

With the built-in handler's lanes (the default), one worker runs two batches at once on two
cores and is the best count on 2 cores: the step need not add one. ``--batch-threads 1`` runs
resnet one batch at a time per worker, as a TorchServe handler runs, where two workers beat
one: the step must add one.

Closed loops use wrk when installed, else ``loadgen.py``. ``--record`` appends the tables to
bench/RESULTS.md: only for a run on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_md  # noqa: E402
from serve_bench import HOST, bodies, descendants, free_port, pss_mb, run_load  # noqa: E402

MODEL = "resnet"
OTHER = "digits"


class Server:
    def __init__(self, store: Path, workdir: Path, cool_down: float,
                 batch_threads: int | None = None) -> None:
        self.ports = [free_port() for _ in range(4)]
        config = {
            "inference_port": self.ports[0], "management_port": self.ports[1],
            "metrics_port": self.ports[2], "grpc_inference_port": self.ports[3],
            "model_store": str(store), "load_models": [f"{MODEL}={MODEL}.mar",
                                                       f"{OTHER}={OTHER}.mar"],
            "workdir": str(workdir / "work"), "disable_token_auth": True,
            "model_snapshot": False, "autoscale": {"cool_down_s": cool_down},
        }
        if batch_threads is not None:  # 1: one batch at a time, as a TorchServe handler runs
            config["models"] = {MODEL: {"1.0": {"batchThreads": batch_threads}}}
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = workdir / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve", "start", "--config", str(path)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "Press Ctrl-C" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.mgmt = f"http://{HOST}:{self.ports[1]}"

    def scale(self, model: str, low: int, high: int) -> None:
        r = httpx.put(f"{self.mgmt}/models/{model}", timeout=300, params={
            "min_worker": low, "max_worker": high, "synchronous": "true"})
        r.raise_for_status()

    def describe(self, model: str) -> dict:
        return httpx.get(f"{self.mgmt}/models/{model}", timeout=30).json()[0]

    def workers(self, model: str) -> tuple[int, int]:
        """(the count the autoscaler holds or moves to, ready workers)"""
        d = self.describe(model)
        return d["autoscale"]["currentWorkers"], sum(w["status"] == "READY"
                                                    for w in d["workers"])

    def wait(self, predicate, timeout: float) -> float:
        """Seconds until ``predicate()`` held (polled every 0.1 s); inf if it never did."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if predicate():
                return time.monotonic() - began
            time.sleep(0.1)
        return float("inf")

    def pss(self) -> float:
        return pss_mb([self.proc.pid, *descendants(self.proc.pid)])

    def worker_pss(self, model: str) -> float:
        return pss_mb([w["pid"] for w in self.describe(model)["workers"] if w["pid"]])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def load(srv: Server, model: str, concurrency: int, seconds: float, warmup: float = 0.0):
    body, ctype = bodies(model)["npy" if model == MODEL else "json"]
    if warmup:
        run_load(srv.ports[0], f"/predictions/{model}", body, ctype, concurrency, warmup)
    return run_load(srv.ports[0], f"/predictions/{model}", body, ctype, concurrency, seconds)


async def step(srv: Server, args: argparse.Namespace) -> dict:
    """c=1, then the step, with the worker count watched every 0.1 s from the step on."""
    await asyncio.to_thread(load, srv, MODEL, 1, 5.0)
    began = time.monotonic()
    seen: list[tuple[float, int, int]] = []
    settle = asyncio.create_task(asyncio.to_thread(load, srv, MODEL, args.concurrency,
                                                   args.settle))
    while not settle.done():
        target, ready = await asyncio.to_thread(srv.workers, MODEL)
        seen.append((time.monotonic() - began, target, ready))
        await asyncio.sleep(0.1)
    first = await settle
    end = await asyncio.to_thread(load, srv, MODEL, args.concurrency, args.duration)
    rise = next((t for t, target, _ in seen if target > 1), float("inf"))
    ready = next((t for t, _, r in seen if r > 1), float("inf"))
    return {"rise_s": rise, "ready_s": ready, "workers": srv.workers(MODEL)[1],
            "rps": end.rps, "errors": first.errors + end.errors}


def zero(srv: Server, args: argparse.Namespace) -> list[tuple[float, float, int]]:
    """(idle PSS of its workers MB, first request ms, status) per idle spell."""
    srv.scale(MODEL, 0, 1)
    out = []
    body, ctype = bodies(MODEL)["npy"]
    for _ in range(args.zero_cycles):
        srv.wait(lambda: not srv.describe(MODEL)["workers"], args.cool_down * 4 + 30)
        idle = srv.worker_pss(MODEL)
        began = time.perf_counter()
        r = httpx.post(f"http://{HOST}:{srv.ports[0]}/predictions/{MODEL}", content=body,
                       headers={"Content-Type": ctype}, timeout=300)
        out.append((idle, (time.perf_counter() - began) * 1000, r.status_code))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured load")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds of the step's load before its throughput is measured")
    p.add_argument("--cool-down", type=float, default=10.0, help="autoscale cool_down_s")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-workers", type=int, default=4)
    p.add_argument("--zero-cycles", type=int, default=3)
    p.add_argument("--batch-threads", type=int, default=None,
                   help="resnet's batchThreads (default auto: lanes; 1: one batch at a time "
                        "per worker, where more workers pay)")
    p.add_argument("--record", action="store_true",
                   help="append the tables to bench/RESULTS.md (a quiet machine only)")
    args = p.parse_args()
    store = args.model_store.resolve()
    if not (store / f"{MODEL}.mar").exists():
        sys.exit(f"no {MODEL}.mar in {store}: make examples (or modelserve examples "
                 f"--model-store {store})")
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(store, Path(tmp), args.cool_down, args.batch_threads)
        try:
            sweep = {}
            for k in range(1, args.max_workers + 1):
                srv.scale(MODEL, k, k)
                sweep[k] = load(srv, MODEL, args.concurrency, args.duration, warmup=2.0)
                say(f"fixed {k} worker(s)   c={args.concurrency}: {sweep[k].rps:8.1f} req/s, "
                    f"p99 {sweep[k].percentile(99) * 1000:7.1f} ms, errors {sweep[k].errors}")
            best = max(sweep, key=lambda k: sweep[k].rps)
            srv.scale(MODEL, 1, 1)
            time.sleep(3)
            idle = srv.pss()
            srv.scale(MODEL, 1, args.max_workers)
            s = asyncio.run(step(srv, args))
            say(f"step c=1 -> c={args.concurrency}: count rose after {s['rise_s']:.1f} s "
                f"(ready {s['ready_s']:.1f} s), ends at {s['workers']} worker(s), "
                f"{s['rps']:.1f} req/s = {s['rps'] / sweep[best].rps:.0%} of the best fixed "
                f"({best}: {sweep[best].rps:.1f}), errors {s['errors']}")
            back = srv.wait(lambda: srv.workers(MODEL) == (1, 1) and
                            len(srv.describe(MODEL)["workers"]) == 1,
                            args.cool_down * (args.max_workers + 2) + 60)
            time.sleep(2)
            after = srv.pss()
            say(f"load removed: back to 1 worker after {back:.1f} s (cool-down "
                f"{args.cool_down:g} s); server PSS {after:.0f} MB against {idle:.0f} MB idle "
                f"before the step ({after / idle - 1:+.1%})")
            solo = {m: load(srv, m, args.concurrency // 2, args.duration, warmup=2.0)
                    for m in (MODEL, OTHER)}

            async def both() -> list:
                return await asyncio.gather(*(asyncio.to_thread(
                    load, srv, m, args.concurrency // 2, args.duration, 2.0)
                    for m in (MODEL, OTHER)))
            together = dict(zip((MODEL, OTHER), asyncio.run(both())))
            for m in (MODEL, OTHER):
                say(f"both at once, {m:6} c={args.concurrency // 2}: "
                    f"{together[m].rps:8.1f} req/s = {together[m].rps / solo[m].rps:.0%} of "
                    f"solo ({solo[m].rps:.1f}), errors {together[m].errors + solo[m].errors}")
            for i, (pss, ms, status) in enumerate(zero(srv, args), 1):
                say(f"minWorkers 0, idle spell {i}: its workers' PSS {pss:.0f} MB; first "
                    f"request {ms:.0f} ms, status {status}")
        finally:
            srv.stop()
    if args.record:
        results_md.record("autoscaling (bench/autoscale.py)", ["\n".join(lines)],
                          notes="resnet (minWorkers 1, maxWorkers "
                          f"{args.max_workers}) with digits beside it; autoscale defaults "
                          f"but cool_down_s {args.cool_down:g}; resnet's batchThreads "
                          f"{args.batch_threads if args.batch_threads is not None else 'auto'}.")


if __name__ == "__main__":
    main()
