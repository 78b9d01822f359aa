r"""modelserve's own cost per request against the floor of its stack.

The model returns its input (``echo``, a handler that imports nothing: no model time at all),
asked with a JSON body and with a binary one (raw bytes, ``application/octet-stream``) at
``/predictions/echo``. The floor is ``floor_app.py``: a bare ASGI app on uvicorn + httptools +
uvloop, the stack modelserve's frontend runs on, answering the same body. Both get the same
core budget: the server's whole process tree is pinned to ``--server-cpus`` and wrk to
``--wrk-cpus`` (default: core 0 and core 1), so neither competes with the load generator.

Per request it reports CPU time (utime + stime from /proc over the load): the floor's one
process; modelserve's frontend alone (the overhead the goal is about: ≤ 2× the floor) and its
whole tree (frontend + worker); and wrk's req/s, p50 and p99 at each concurrency. CPU time per
request is what the goal compares: unlike latency it hardly moves when other work shares the
machine.

    .venv/bin/python bench/overhead_floor.py [--concurrency 1 32] [--duration 10] \
        [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_md  # noqa: E402
import wrk  # noqa: E402
from compare_torchserve import stop  # noqa: E402
from serve_bench import HOST, descendants, free_port  # noqa: E402

from modelserve.archive import create_archive  # noqa: E402

HERE = Path(__file__).resolve().parent
ECHO = textwrap.dedent('''
    """Returns each request's body as it came: JSON as the decoded value, bytes as bytes."""


    class Echo:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            return [row.get("body", row.get("data")) for row in data]
''')
BODIES = {  # the digits example's input: 64 numbers as JSON, and as raw float32 bytes
    "json": (json.dumps([float(i % 17) for i in range(64)]).encode(), "application/json"),
    "binary": (bytes(range(256)), "application/octet-stream"),
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / TICK


def echo_store(work: Path) -> Path:
    store, src = work / "store", work / "echo-src"
    store.mkdir()
    src.mkdir()
    (src / "echo_handler.py").write_text(ECHO)
    (src / "model-config.yaml").write_text(yaml.safe_dump(
        {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5}))
    create_archive(model_name="echo", version="1.0", handler=str(src / "echo_handler.py"),
                   config_file=src / "model-config.yaml", export_path=store, force=True)
    return store


def pinned(cpus: set[int] | None):  # noqa: ANN201 - a preexec_fn
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def wait_http(proc: subprocess.Popen, url: str, body: bytes, ctype: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"{url} did not answer in 120 s")


def start_floor(cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "floor_app.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pinned(cpus), start_new_session=True)
    url = f"http://{HOST}:{port}/"
    wait_http(proc, url, b"{}", "application/json")
    return proc, url


def start_modelserve(work: Path, cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    ports = [free_port() for _ in range(3)]
    config = work / "modelserve.yaml"
    config.write_text(yaml.safe_dump({
        "inference_port": ports[0], "management_port": ports[1], "metrics_port": ports[2],
        "grpc_inference_port": 0, "model_store": str(echo_store(work)),
        "load_models": ["echo=echo.mar"], "workdir": str(work / "ms"), "log_level": "warning",
        "model_snapshot": False, "disable_token_auth": True}))
    proc = subprocess.Popen([sys.executable, "-m", "modelserve", "start", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=pinned(cpus), start_new_session=True)
    url = f"http://{HOST}:{ports[0]}/predictions/echo"
    wait_http(proc, url, b"{}", "application/json")
    return proc, url


def measure(name: str, proc: subprocess.Popen, url: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    for encoding, (body, ctype) in BODIES.items():
        for c in args.concurrency:
            tree = [proc.pid, *descendants(proc.pid)]
            wrk.run(url, body, ctype, c, 1, warmup_s=0)  # warm caches and connections
            before_front, before_tree = cpu_seconds([proc.pid]), cpu_seconds(tree)
            r = wrk.run(url, body, ctype, c, args.duration, warmup_s=0)
            front = cpu_seconds([proc.pid]) - before_front
            whole = cpu_seconds(tree) - before_tree
            done = max(1, r.requests)
            rows.append({"server": name, "body": encoding, "c": c, "rps": r.rps,
                         "p50": r.p50_s * 1e3, "p99": r.p99_s * 1e3, "errors": r.errors,
                         "front_us": front / done * 1e6, "tree_us": whole / done * 1e6})
    return rows


def median_rows(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["body"], r["c"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("rps", "p50", "p99", "front_us", "tree_us"):
            row[key] = statistics.median(r[key] for r in group)
        row["errors"] = sum(r["errors"] for r in group)
        out.append(row)
    return out


def report(rows: list[dict]) -> str:
    lines = [f"{'server':10} {'body':6} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'err':>4} {'CPU us/req: frontend':>21} {'whole tree':>10}"]
    for r in rows:
        lines.append(f"{r['server']:10} {r['body']:6} {r['c']:>3} {r['rps']:>8.1f} "
                     f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['errors']:>4} "
                     f"{r['front_us']:>21.1f} {r['tree_us']:>10.1f}")
    floor = {(r["body"], r["c"]): r for r in rows if r["server"] == "floor"}
    lines.append("\nmodelserve over the floor (goal: frontend CPU per request <= 2x the floor's):")
    for r in rows:
        base = floor.get((r["body"], r["c"]))
        if r["server"] == "floor" or base is None:
            continue
        ratio = r["front_us"] / base["front_us"]
        lines.append(f"  {r['body']:6} c={r['c']:<3} frontend {ratio:4.2f}x "
                     f"(+{r['front_us'] - base['front_us']:.0f} us), whole tree "
                     f"{r['tree_us'] / base['tree_us']:4.2f}x, p50 +"
                     f"{r['p50'] - base['p50']:.2f} ms  goal "
                     f"{'met' if ratio <= 2 else 'MISSED'}")
    return "\n".join(lines)


def cpu_set(text: str) -> set[int] | None:
    return None if text == "none" else {int(c) for c in text.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved; medians reported")
    parser.add_argument("--server-cpus", default="0",
                        help="cores for each server's process tree ('none': no pinning)")
    parser.add_argument("--wrk-cpus", default="1", help="cores for wrk ('none': no pinning)")
    parser.add_argument("--record", action="store_true",
                        help="append the table to bench/RESULTS.md (quiet machine only)")
    args = parser.parse_args()
    if not wrk.available():
        sys.exit("wrk is not installed: apt-get install wrk")
    server_cpus, wrk_cpus = cpu_set(args.server_cpus), cpu_set(args.wrk_cpus)
    if wrk_cpus is not None:  # this process and so wrk; the servers set their own cores
        os.sched_setaffinity(0, wrk_cpus)
    rows: list[dict] = []
    for _ in range(args.rounds):
        for name in ("floor", "modelserve"):
            with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
                proc, url = (start_floor(server_cpus) if name == "floor"
                             else start_modelserve(Path(tmp), server_cpus))
                try:
                    rows += measure(name, proc, url, args)
                finally:
                    stop(proc)
    text = report(median_rows(rows))
    print(text)
    if args.record:
        results_md.record(
            "per-request overhead against the uvicorn + httptools floor (issue 22)", [text],
            f"An echo model (no model time) at /predictions/echo, batch 8, delay 5 ms, one "
            f"worker; the floor is bench/floor_app.py. Servers on cores {args.server_cpus}, "
            f"wrk on {args.wrk_cpus}; medians of {args.rounds} interleaved rounds. "
            "CPU time per request from /proc (utime + stime).")


if __name__ == "__main__":
    main()
