"""Hostile clients beside normal load, modelserve and TorchServe 0.12 under the same mix:
does the server keep serving, and lose no model? (issue 31)

Both servers serve the same archives (``ts_dropin_setup``: ``linear`` and ``resnetish``,
archived by ``torch-model-archiver`` with the TorchServe-style handler) from one
``config.properties``, started the same way (``hostile_torchserve.py``); modelserve too runs
them, not a model of its own. Each runs with its descriptor limit at ``--nofile`` (soft and
hard, the whole process tree: 1,024 as in issue 31). Phases, per server:

1. baseline: ``--concurrency`` closed-loop clients POST to ``linear`` for ``--baseline`` s;
2. attack: ``--attackers`` slowloris connections to the inference port (a request line, then
   one header line every ``--interval`` s, never the blank line; a closed one reconnects at
   its next tick), started in a process of their own, beside the same normal load for
   ``--duration`` s, and one /ping probe a second on a new connection;
3. restart under attack: the server's whole process tree is stopped (TorchServe: the JVM
   too) and started again while the attackers go on; how long until /ping answers 200, and
   how many models have all workers READY ``--settle`` s later (None: the management API
   could not be reached), then again once the attackers have left: a model not READY
   within ``--settle`` s of that is lost.

For each server: the normal requests answered (goal >= 99 %), their p99 against its own
baseline's (goal <= 1.2x), the probes answered, how the slow connections had ended when the
attack phase did (408: modelserve's deadline; 503: room made for others; reset or EOF; still
open, as the client sees it: TorchServe has no deadline, and a connection that a server out
of descriptors never accepted counts too) and the models lost (goal 0). One table, a column
a server. (TorchServe's /ping says 200 as soon as its workers exist, loading or failing and
retried: hence the READY counts from the management API.)

    python bench/hostile.py [--server modelserve|torchserve|both] [--attackers 1100]
        [--nofile 1024] [--duration 75] [--ts-venv bench/out/ts-e2e-venv] [--json]
    python bench/hostile.py --attackers 200 --nofile 256 --baseline 5 --duration 15 \
        --settle 10          # a smoke run

``--config '{"request_header_timeout": 10}'`` passes settings to modelserve (as
``MODELSERVE_*`` variables); TorchServe has no such settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_torchserve as servers  # noqa: E402

HOST = servers.HOST


# -- the attackers (a process of their own: their loop must not slow the normal clients) -----
async def _slow_client(port: int, path: str, interval: float, stop: asyncio.Event,
                       seen: Counter[str], jitter: bool) -> None:
    if jitter:  # spread the clients' ticks over the interval instead of all at once
        await asyncio.sleep(random.random() * interval)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode())
            seen["connected"] += 1
            seen["open"] += 1  # a gauge: still open when the counters are read
        except OSError:
            seen["connect_failed"] += 1
            await asyncio.sleep(interval)
            continue
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(64), interval)
            except TimeoutError:
                writer.write(b"X-Slow: 1\r\n")  # one more header line, never the blank one
                continue
            except OSError:
                data = None
            seen["closed_reset" if data is None else "closed_eof" if not data else
                 f"closed_{data[9:12].decode(errors='replace')}"
                 if data.startswith(b"HTTP/1.") else "closed_other"] += 1
            break
        seen["open"] -= 1
        writer.close()
        await asyncio.sleep(interval)  # reconnects at its next tick, as slowloris does


def _attack(port: int, path: str, count: int, interval: float, jitter: bool,
            stop_flag: multiprocessing.Event, snap_flag: multiprocessing.Event,
            results: multiprocessing.Queue) -> None:
    """The slow clients until ``stop_flag``; their counters go to ``results`` whenever
    ``snap_flag`` is set, and once more at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> Counter[str]:
        seen: Counter[str] = Counter()
        stop = asyncio.Event()
        tasks = []
        for i in range(count):  # ramp up: all open within about a second
            tasks.append(asyncio.create_task(_slow_client(port, path, interval, stop, seen,
                                                          jitter)))
            if i % 100 == 99:
                await asyncio.sleep(0.1)
        while not stop_flag.is_set():
            if snap_flag.is_set():
                results.put(dict(seen))
                snap_flag.clear()
            await asyncio.sleep(0.2)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return seen

    results.put(dict(asyncio.run(main())))


# -- normal clients --------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _normal(port: int, path: str, body: bytes, seconds: float, concurrency: int,
                  rate: float | None) -> dict:
    """``concurrency`` clients, each sending its next request when the last is answered or,
    with ``rate``, at its share of that many requests a second."""
    request = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    probes: Counter[int] = Counter()
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        conn = None
        gap = concurrency / rate if rate else 0.0
        due = time.perf_counter()
        while time.perf_counter() < stop_at:
            if gap:
                due += gap
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(HOST, port)
                reader, writer = conn
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                size = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                await asyncio.wait_for(reader.readexactly(size), 10)
                statuses[head[9:12].decode()] += 1
                latencies.append(time.perf_counter() - sent)
                if b"connection: close" in head.lower():
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, AttributeError):
                statuses["failed"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None

    async def prober() -> None:
        while time.perf_counter() < stop_at:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(f"GET /ping HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                probes[int(head[9:12])] += 1
                writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                probes[0] += 1
            await asyncio.sleep(1.0)

    await asyncio.gather(*(client() for _ in range(concurrency)), prober())
    latencies.sort()
    sent = sum(statuses.values())
    return {
        "requests": sent, "answered_200": statuses["200"],
        "answered_pct": round(100 * statuses["200"] / max(1, sent), 2),
        "statuses": dict(statuses),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "probes": {"sent": sum(probes.values()), "answered_200": probes[200]},
    }


def run_server(server: servers.Server, args: argparse.Namespace) -> dict:
    """The three phases against one server; what it saw (a phase that failed: "error")."""
    path, body = f"/predictions/{servers.LOAD_MODEL}", servers.body()
    load = (path, body)
    report: dict = {}
    attack = None
    ctx = multiprocessing.get_context("spawn")
    stop, snap, results = ctx.Event(), ctx.Event(), ctx.Queue()
    try:
        report["start_s"] = round(server.start(), 2)
        if report["start_s"] == float("inf"):
            raise RuntimeError("no /ping 200 within 180 s of starting")
        port, pid = server.ports[0], server.frontend()
        before = cpu_s(pid)
        report["baseline"] = asyncio.run(_normal(port, *load, args.baseline,
                                                 args.concurrency, args.rate))
        report["baseline"]["server_cpu_s"] = round(cpu_s(pid) - before, 1)
        attack = ctx.Process(target=_attack, args=(port, path, args.attackers, args.interval,
                                                   args.jitter, stop, snap, results))
        attack.start()
        time.sleep(3)  # the attackers are in
        before, attack_before = cpu_s(pid), cpu_s(attack.pid or 0)
        report["attack"] = asyncio.run(_normal(port, *load, args.duration, args.concurrency,
                                               args.rate))
        report["attack"]["server_cpu_s"] = round(cpu_s(pid) - before, 1)
        report["attack"]["attackers_cpu_s"] = round(cpu_s(attack.pid or 0) - attack_before, 1)
        snap.set()
        report["slow_at_attack_end"] = results.get(timeout=60)
        if server.kind == "modelserve":
            report["server_counters"] = server.metrics()
        report["models_after_attack"] = server.ready_models()
        report["stop_s"] = round(server.stop(), 2)  # restart while the attackers go on
        report["restart_ready_s"] = round(server.start(), 2)
        time.sleep(args.settle)
        loaded = server.ready_models() if server.alive() else None
        report["models_after_restart"] = loaded  # None: the server could not be reached
        report["after_restart"] = asyncio.run(_normal(port, *load, 10, args.concurrency,
                                                      args.rate))
        stop.set()
        report["attackers_seen"] = results.get(timeout=60)
        attack.join(30)
        left, since = None, time.monotonic()  # a server out of descriptors answers again
        while time.monotonic() - since < max(2.0, args.settle):
            time.sleep(1)
            left = server.ready_models()
            if left is not None and set(server.expected) <= set(left):
                break
        report["models_after_attackers_left"] = left
        report["models_lost"] = (None if left is None  # unknown: unreachable even now
                                 else len(set(server.expected) - set(left)))
    except Exception as exc:  # the other server still runs; the table shows what is known
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        if attack is not None and attack.is_alive():
            attack.terminate()
        server.stop()
        report["log_tail"] = server.log_tail()
    base = report.get("baseline", {}).get("p99_ms")
    hit = report.get("attack", {}).get("p99_ms")
    report["p99_ratio"] = round(hit / base, 2) if base and hit else None
    return report


def _pick(report: dict, *keys: str) -> object:
    for key in keys:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def _slow(r: dict, *keys: str) -> int | None:
    seen = r.get("slow_at_attack_end")
    return sum(v for k, v in seen.items() if k in keys) if seen is not None else None


def _other(r: dict) -> int | None:
    seen = r.get("slow_at_attack_end")
    known = {"connected", "open", "connect_failed", "closed_408", "closed_503",
             "closed_reset", "closed_eof"}
    return sum(v for k, v in seen.items() if k not in known) if seen is not None else None


def _ready(r: dict, key: str, expected: int) -> str | None:
    return None if r.get(key) is None else f"{len(r[key])}/{expected}"


ROWS = [
    ("start: s to /ping 200", lambda r, n: r.get("start_s")),
    ("baseline: requests", lambda r, n: _pick(r, "baseline", "requests")),
    ("baseline: answered %", lambda r, n: _pick(r, "baseline", "answered_pct")),
    ("baseline: p50 / p99 ms", lambda r, n: f"{_pick(r, 'baseline', 'p50_ms')} / "
     f"{_pick(r, 'baseline', 'p99_ms')}"),
    ("attack: requests", lambda r, n: _pick(r, "attack", "requests")),
    ("attack: answered % (goal >= 99)", lambda r, n: _pick(r, "attack", "answered_pct")),
    ("attack: p50 / p99 ms", lambda r, n: f"{_pick(r, 'attack', 'p50_ms')} / "
     f"{_pick(r, 'attack', 'p99_ms')}"),
    ("attack: p99 / baseline p99 (goal <= 1.2)", lambda r, n: r.get("p99_ratio")),
    ("attack: /ping probes answered", lambda r, n: None if "attack" not in r else
     f"{r['attack']['probes']['answered_200']}/{r['attack']['probes']['sent']}"),
    ("attack: server CPU s", lambda r, n: _pick(r, "attack", "server_cpu_s")),
    ("slow conns: connections made", lambda r, n: _slow(r, "connected")),
    ("slow conns: ended by 408", lambda r, n: _slow(r, "closed_408")),
    ("slow conns: ended by 503", lambda r, n: _slow(r, "closed_503")),
    ("slow conns: ended by reset / EOF", lambda r, n: _slow(r, "closed_reset", "closed_eof")),
    ("slow conns: ended otherwise", lambda r, n: _other(r)),
    ("slow conns: still open", lambda r, n: _slow(r, "open")),
    ("slow conns: connects refused", lambda r, n: _slow(r, "connect_failed")),
    ("models READY after attack", lambda r, n: _ready(r, "models_after_attack", n)),
    ("restart: s to stop", lambda r, n: r.get("stop_s")),
    ("restart: s to /ping 200", lambda r, n: r.get("restart_ready_s")),
    ("restart: models READY after settle", lambda r, n: _ready(r, "models_after_restart", n)),
    ("models READY once attackers left", lambda r, n: _ready(r, "models_after_attackers_left",
                                                             n)),
    ("models lost (goal 0)", lambda r, n: r.get("models_lost")),
    ("after restart: answered %", lambda r, n: _pick(r, "after_restart", "answered_pct")),
]


def table(reports: dict[str, dict], expected: int) -> str:
    """One row a measure, one column a server ("-": not measured)."""
    def cell(value: object) -> str:
        return "-" if value is None or value == "None / None" else str(value)

    width = max(len(label) for label, _ in ROWS)
    lines = [f"{'':{width}}" + "".join(f"  {name:>14}" for name in reports)]
    for label, get in ROWS:
        lines.append(f"{label:{width}}" + "".join(f"  {cell(get(r, expected)):>14}"
                                                   for r in reports.values()))
    for name, r in reports.items():
        if "error" in r:
            lines.append(f"{name}: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=[*servers.SERVERS, "both"], default="both")
    parser.add_argument("--ts-venv", type=Path, default=servers.DEFAULT_VENV,
                        help="TorchServe 0.12's venv (built by ts_dropin_setup if missing)")
    parser.add_argument("--attackers", type=int, default=1100)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--jitter", action="store_true",
                        help="spread the attackers' ticks (default: all at once, as slowloris)")
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=None,
                        help="normal requests a second in all (default: closed loop)")
    parser.add_argument("--baseline", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=75.0,
                        help="seconds of load beside the attackers (the deadline is 60 s)")
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--config", default="{}", help="extra modelserve settings, JSON")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    venv = args.ts_venv.absolute()
    servers.ts_venv(venv)
    kinds = list(servers.SERVERS) if args.server == "both" else [args.server]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report: dict = {"attackers": args.attackers, "nofile": args.nofile,
                    "interval_s": args.interval, "concurrency": args.concurrency,
                    "rate": args.rate, "jitter": args.jitter, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        store, archives = servers.build_store(venv, work)
        report["models"] = list(archives)
        for kind in kinds:
            print(f"{kind}: baseline, attack, restart", file=sys.stderr, flush=True)
            server = servers.Server(kind, work / kind, store, archives, venv,
                                    args.nofile, json.loads(args.config))
            report["servers"][kind] = run_server(server, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(table(report["servers"], len(report["models"])))


if __name__ == "__main__":
    main()
