r"""Drop-in speed: a TorchServe user's own archives, handler and config.properties, served by
TorchServe 0.12 and by modelserve in turn, under the same load (issue 19).

The recipe, from a clean clone (TorchServe needs Java 17; wrk: ``apt-get install wrk``):

    .venv/bin/python bench/ts_dropin.py --setup            # once: bench/out/ts-venv
    .venv/bin/python bench/ts_dropin.py --rounds 3 --record

What runs: two TorchScript models (``linear``: Linear 16->4, a 126-byte JSON body;
``resnetish``: a ResNet-18-style CNN on 3x64x64, a 97 KB JSON body), each archived by
``torch-model-archiver`` with ``ts_dropin_handler.py`` (a ``BaseHandler`` subclass written the
TorchServe way). One ``config.properties`` for both servers: ``default_workers_per_model=1``,
``models={...}`` with batchSize 8, maxBatchDelay 5 ms, minWorkers = maxWorkers = 1,
``disable_system_metrics=true``, TorchServe's log4j2 at WARN (``vmargs``). Both start the same
way: ``torchserve --start --foreground --ncs --model-store S --ts-config config.properties
--models linear=linear.mar resnetish=resnetish.mar`` (modelserve: ``modelserve torchserve``
with the same flags). Each model in turn, each concurrency: wrk with the model's JSON body,
5 s of warm-up then 10 s measured. ``--rounds N`` alternates the servers N times (a busy
machine drifts; alternating cancels much of it) and reports medians and every round's ratio.

Each row: req/s, p50/p99 (wrk), the server's CPU per answered request (frontend and the
model's worker; TorchServe: JVM and worker), modelserve's mean batch, and "other": the cores
busy outside the server while measuring (wrk included; ~0.1 on a quiet machine; more means
someone else's load shared the cores). The goals of issue 19 are checked on the medians.

``--variant NAME:KEY=VALUE,...`` adds a modelserve run with extra environment (settings such
as ``MODELSERVE_BATCH_THREADS=1``, or ``PYTHONPATH=/path/to/other/checkout``): A/B runs of one
lever, interleaved with the rest. ``--servers`` picks which run (``torchserve``,
``modelserve`` and the variants' names). ``--profile DIR`` samples the frontend and the
loaded model's worker with py-spy during each measured window (numbers taken while profiling
are not recorded). ``--record`` appends the table and the command to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ts_dropin_profile  # noqa: E402
import ts_dropin_report as report  # noqa: E402
import ts_dropin_setup as setup  # noqa: E402
import wrk  # noqa: E402
from serve_bench import descendants, free_port  # noqa: E402


@dataclass
class Server:
    """One way to run a server: TorchServe, or modelserve with extra environment."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def torchserve(self) -> bool:
        return self.name == "torchserve"


def parse_variant(text: str) -> Server:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return Server(name, env)


def wait_ready(proc: subprocess.Popen, port: int, models: list[str],
               timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before its models loaded")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/models/{pending[0]}",
                                        timeout=2) as r:
                workers = json.loads(r.read())[0].get("workers", [])
            if workers and all(w["status"] == "READY" for w in workers):
                pending.pop(0)
                continue
        except (OSError, ValueError, IndexError, KeyError):
            pass
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"models not ready after {timeout:.0f} s: {pending}")


def start(server: Server, args: argparse.Namespace, store: Path, archives: dict[str, str],
          work: Path, tries: int = 3) -> tuple[subprocess.Popen, list[int]]:
    """The server with a fresh config.properties (new free ports, same content otherwise);
    a start that fails (a port taken meanwhile by another program) is tried again."""
    for attempt in range(1, tries + 1):
        ports = [free_port() for _ in range(5)]
        props = work / "config.properties"
        setup.config_properties(props, ports, archives)
        flags = ["--start", "--foreground", "--ncs", "--model-store", str(store),
                 "--ts-config", str(props), "--models", *(f"{m}={a}" for m, a in archives.items())]
        if server.torchserve:
            bin_dir = args.ts_venv / "bin"
            cmd, env = [str(bin_dir / "torchserve"), *flags], setup.server_env(work, bin_dir)
        else:
            cmd = [sys.executable, "-m", "modelserve", "torchserve", *flags]
            # modelserve also serves OIP v2 gRPC, on 8085 unless told: a free port, so that
            # a server of someone else's on this machine does not stop this one starting
            env = {**setup.server_env(work), "MODELSERVE_GRPC_INFERENCE_PORT": str(free_port()),
                   **server.env}
        out = work / "server.out"
        with out.open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=work, start_new_session=True)
        try:
            wait_ready(proc, ports[1], list(archives))
            return proc, ports
        except RuntimeError as exc:
            stop(proc)
            logs = [out, work / "logs" / "ts_log.log"]
            tail = [line for path in logs if path.exists()
                    for line in path.read_text(errors="replace").splitlines()
                    if "ERROR" in line or "Error" in line][-5:]
            print(f"  start {attempt}/{tries} failed: {exc}; " + " | ".join(tail), flush=True)
            if attempt == tries:
                raise
        except BaseException:
            stop(proc)
            raise
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def frontend_pid(root: int, torchserve: bool) -> int:
    """The frontend: TorchServe's JVM, or the ``modelserve start`` that ``modelserve
    torchserve`` runs."""
    for pid in [root, *descendants(root)]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if torchserve and cmdline[0].endswith(b"java"):
            return pid
        if not torchserve and b"modelserve" in cmdline and b"start" in cmdline:
            return pid
    return root


def worker_pid(root: int, model: str, torchserve: bool) -> int | None:
    """The Python process serving ``model``: modelserve names it ``ms:<model>``; TorchServe's
    worker is the ``model_service_worker`` whose log names the model (the first one found
    when that cannot be told)."""
    found = []
    for pid in descendants(root):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if not torchserve and comm.startswith(f"ms:{model}"[:15]):
            return pid
        if torchserve and "model_service_worker" in cmdline:
            found.append((pid, cmdline))
    return ts_dropin_profile.torchserve_worker(found, model)


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def batch_totals(port: int, model: str) -> tuple[float, float]:
    """modelserve's batch-size histogram sum and count for ``model`` (its /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0, 0.0
    found = dict(re.findall(rf'modelserve_batch_size_(sum|count){{model_name="{model}",'
                            r'model_version="[^"]+"} (\S+)', text))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def run_server(server: Server, args: argparse.Namespace, store: Path,
               archives: dict[str, str], bodies: dict[str, bytes], work: Path,
               round_: int) -> list[dict]:
    proc, ports = start(server, args, store, archives, work)
    front = frontend_pid(proc.pid, server.torchserve)
    rows = []
    try:
        for model in args.models:
            for c in args.concurrency:
                url = f"http://127.0.0.1:{ports[0]}/predictions/{model}"
                body = bodies[model]
                if args.warmup > 0:
                    wrk.run(url, body, args.content_type, c, args.warmup, warmup_s=0)
                pids = [proc.pid, *descendants(proc.pid)]
                worker = worker_pid(proc.pid, model, server.torchserve)
                cpu0, front0, worker0 = cpu_s(pids), cpu_s([front]), cpu_s([worker or 0])
                busy0, t0 = machine_busy_s(), time.monotonic()
                batches0 = (0.0, 0.0) if server.torchserve else batch_totals(ports[2], model)
                with ts_dropin_profile.Sampler(
                        args.profile, f"{server.name}-{model}-c{c}-r{round_}",
                        {"frontend": None if server.torchserve else front, "worker": worker},
                        0, args.duration):
                    r = wrk.run(url, body, args.content_type, c, args.duration, warmup_s=0)
                served = max(1, r.requests - r.status_errors)
                server_s = cpu_s(pids) - cpu0
                # cores busy with anything but the server (wrk included): a quiet machine
                # shows wrk's share only
                others = (machine_busy_s() - busy0 - server_s) / (time.monotonic() - t0)
                cpu = server_s / served * 1e3
                front_cpu = (cpu_s([front]) - front0) / served * 1e3
                worker_cpu = (cpu_s([worker or 0]) - worker0) / served * 1e3
                batches = [0.0, 0.0] if server.torchserve else \
                    [a - b for a, b in zip(batch_totals(ports[2], model), batches0)]
                mean_batch = batches[0] / batches[1] if batches[1] else None
                rows.append({"server": server.name, "model": model, "c": c, "round": round_,
                             "rps": r.rps, "p50": r.p50_s * 1e3, "p99": r.p99_s * 1e3,
                             "errors": r.errors, "cpu_ms": cpu, "frontend_cpu_ms": front_cpu,
                             "worker_cpu_ms": worker_cpu,
                             "batch": mean_batch, "others": others})
                print(f"  {server.name:24} {model:10} c={c:<3} {r.rps:9.1f} req/s  "
                      f"p50 {r.p50_s * 1e3:8.2f}  p99 {r.p99_s * 1e3:8.2f} ms  "
                      f"CPU {cpu:.3f} ms/req"
                      + f" (frontend {front_cpu:.3f}, worker {worker_cpu:.3f})"
                      + (f"  batch {mean_batch:.2f}" if mean_batch else "")
                      + f"  errors {r.errors}  others {others:.2f} cores",
                      flush=True)
    finally:
        stop(proc)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true",
                        help=f"create the TorchServe venv ({setup.DEFAULT_VENV}) and exit")
    parser.add_argument("--ts-venv", type=Path, default=setup.DEFAULT_VENV)
    parser.add_argument("--models", nargs="+", default=list(setup.MODELS),
                        choices=list(setup.MODELS), help="models to load (both always load)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        metavar="NAME:KEY=VALUE,...", help="a modelserve run with extra env")
    parser.add_argument("--servers", nargs="+", default=None,
                        help="which runs (default: torchserve, modelserve and the variants)")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the Python processes into this folder")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep archives, configs and server logs here (default: a "
                        "temporary folder, removed after)")
    args = parser.parse_args(argv)
    args.ts_venv = args.ts_venv.absolute()
    if args.setup:
        print(f"TorchServe venv ready: {setup.ensure_venv(args.ts_venv)}")
        return
    if not wrk.available():
        sys.exit("wrk is not installed (apt-get install wrk)")
    setup.check_venv(args.ts_venv)
    if (args.ts_venv / "bin" / "py-spy").exists():
        ts_dropin_profile.PY_SPY = str(args.ts_venv / "bin" / "py-spy")
    servers = [Server("torchserve"), Server("modelserve"), *args.variant]
    if args.servers:
        servers = [s for s in servers if s.name in args.servers]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ts-dropin-") as tmp:
        work = Path(tmp) if args.workdir is None else args.workdir.absolute()
        work.mkdir(parents=True, exist_ok=True)
        store = work / "store"
        archives = setup.build_archives(args.ts_venv, store, work)
        bodies = setup.bodies()
        print("bodies: " + ", ".join(f"{m} {len(b)} B" for m, b in bodies.items()))
        for round_ in range(args.rounds):
            # every other round in reverse order: a drifting machine favours no server
            for server in servers if round_ % 2 == 0 else servers[::-1]:
                print(f"round {round_ + 1}/{args.rounds}: {server.name}", flush=True)
                run_dir = work / f"{server.name}-{round_}"
                run_dir.mkdir(exist_ok=True)
                rows += run_server(server, args, store, archives, bodies, run_dir, round_)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    text = report.table(rows, [s.name for s in servers])
    if verdicts := report.goals(rows):
        text += "\n\nissue 19's goals (medians):\n" + verdicts
    print("\n" + text)
    if args.profile:
        print(ts_dropin_profile.summary(args.profile))
    elif args.record:
        report.record(text, args)


if __name__ == "__main__":
    main()
