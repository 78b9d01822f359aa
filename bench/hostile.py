"""Hostile clients beside normal load: does the server keep serving, and lose no model?

The server runs with its descriptor limit at ``--nofile`` (soft and hard, set in its own
process: 1,024 as in issue 31). Phases:

1. baseline: ``--concurrency`` closed-loop clients POST to a model for ``--baseline`` s;
2. attack: ``--attackers`` slowloris connections (a request line, then one header line every
   ``--interval`` s, never the blank line; a closed one reconnects at its next tick), started
   in a process of their own, beside the same normal load for ``--duration`` s, and one /ping
   probe a second on a new connection;
3. restart under attack: the server is stopped and started again while the attackers go on;
   how long until /ping is ready, and how many models are loaded ``--settle`` s later.

It reports the normal requests answered (goal >= 99 %), their p99 against the baseline's
(goal <= 1.2x), the probes answered, what closed the slow connections (408: the deadline; 503:
room made for others) and the models lost (goal 0).

    python bench/hostile.py [--attackers 1100] [--nofile 1024] [--duration 75] [--json]
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
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

HOST = "127.0.0.1"
MODELS = ["echo", "echo2"]
ECHO = textwrap.dedent('''
    class Echo:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            return [{"echo": row.get("body")} for row in data]
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def build_store(root: Path) -> Path:
    """One tiny archive (no torch: it loads in a blink), served under two names."""
    from modelserve.archive import create_archive

    store, src = root / "store", root / "src"
    store.mkdir()
    src.mkdir()
    (src / "echo.py").write_text(ECHO)
    (src / "model-config.yaml").write_text("batchSize: 8\nmaxBatchDelay: 5\n")
    create_archive(model_name="echo", version="1.0", handler=str(src / "echo.py"),
                   config_file=src / "model-config.yaml", export_path=store)
    return store


class Server:
    def __init__(self, root: Path, store: Path, nofile: int, extra: dict) -> None:
        self.ports = [free_port() for _ in range(4)]
        self.root, self.nofile = root, nofile
        config = {
            "inference_port": self.ports[0], "management_port": self.ports[1],
            "metrics_port": self.ports[2], "grpc_inference_port": self.ports[3],
            "model_store": str(store), "load_models": [f"{m}=echo.mar" for m in MODELS],
            "workdir": str(root / "work"), "log_level": "warning",
            "disable_token_auth": True, "model_snapshot": False, **extra,
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start; seconds until /ping answers 200 (inf: not within 120 s)."""
        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve", "start", "--config",
             str(self.root / "config.yaml")], preexec_fn=limited,
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT)
        while time.monotonic() - started < 120:
            try:
                if self.get(self.ports[0], "/ping")[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        return float("inf")

    def get(self, port: int, path: str) -> tuple[int, str]:
        """(status, body); (0, "") when the server cannot be reached (out of descriptors)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def models(self) -> list[str] | None:
        """The registered models; None when the server cannot be reached."""
        status, body = self.get(self.ports[1], "/models")
        return [m["modelName"] for m in json.loads(body)["models"]] if status == 200 else None

    def metrics(self) -> dict[str, float]:
        text = self.get(self.ports[2], "/metrics")[1]
        out: Counter[str] = Counter()
        for line in text.splitlines():
            match = re.match(r"(modelserve_http_\w+)(\{[^}]*\})? (\S+)$", line)
            if match:
                labels = match.group(2) or ""
                phase = re.search(r'(?:phase|state)="(\w+)"', labels)
                key = match.group(1) + (f":{phase.group(1)}" if phase else "")
                out[key] += float(match.group(3))
        return dict(out)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


# -- the attackers (a process of their own: their loop must not slow the normal clients) -----
async def _slow_client(port: int, interval: float, stop: asyncio.Event,
                       seen: Counter[str], jitter: bool) -> None:
    if jitter:  # spread the clients' ticks over the interval instead of all at once
        await asyncio.sleep(random.random() * interval)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n")
            seen["connected"] += 1
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
                data = b""
            seen[{b"HTTP/1.1 408": "closed_408", b"HTTP/1.1 503": "closed_503"}.get(
                data[:12], "closed_plain")] += 1
            break
        writer.close()
        await asyncio.sleep(interval)  # reconnects at its next tick, as slowloris does


def _attack(port: int, count: int, interval: float, jitter: bool,
            stop_flag: multiprocessing.Event, results: multiprocessing.Queue) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> Counter[str]:
        seen: Counter[str] = Counter()
        stop = asyncio.Event()
        tasks = []
        for i in range(count):  # ramp up: all open within about a second
            tasks.append(asyncio.create_task(_slow_client(port, interval, stop, seen,
                                                          jitter)))
            if i % 100 == 99:
                await asyncio.sleep(0.1)
        while not stop_flag.is_set():
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


async def _normal(port: int, seconds: float, concurrency: int, rate: float | None) -> dict:
    """``concurrency`` clients, each sending its next request when the last is answered or,
    with ``rate``, at its share of that many requests a second."""
    body = b'{"x": 1}'
    request = (f"POST /predictions/echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--config", default="{}", help="extra server settings, JSON")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report: dict = {"attackers": args.attackers, "nofile": args.nofile,
                    "interval_s": args.interval, "concurrency": args.concurrency,
                    "rate": args.rate, "jitter": args.jitter}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = build_store(root)
        server = Server(root, store, args.nofile, json.loads(args.config))
        attack = None
        try:
            report["start_s"] = round(server.start(), 2)
            port = server.ports[0]
            pid = server.proc.pid if server.proc else 0
            before = cpu_s(pid)
            report["baseline"] = asyncio.run(_normal(port, args.baseline, args.concurrency,
                                                     args.rate))
            report["baseline"]["server_cpu_s"] = round(cpu_s(pid) - before, 1)
            ctx = multiprocessing.get_context("spawn")
            stop, results = ctx.Event(), ctx.Queue()
            attack = ctx.Process(target=_attack, args=(port, args.attackers, args.interval,
                                                       args.jitter, stop, results))
            attack.start()
            time.sleep(3)  # the attackers are in
            before, attack_before = cpu_s(pid), cpu_s(attack.pid or 0)
            report["attack"] = asyncio.run(_normal(port, args.duration, args.concurrency,
                                                   args.rate))
            report["attack"]["server_cpu_s"] = round(cpu_s(pid) - before, 1)
            report["attack"]["attackers_cpu_s"] = round(cpu_s(attack.pid or 0)
                                                        - attack_before, 1)
            report["server_counters"] = server.metrics()
            report["models_after_attack"] = server.models()
            server.stop()  # restart while the attackers go on
            report["restart_ready_s"] = round(server.start(), 2)
            time.sleep(args.settle)
            loaded = server.models() if server.proc and server.proc.poll() is None else None
            report["models_after_restart"] = loaded  # None: the server could not be reached
            report["models_lost"] = (None if loaded is None  # unknown: unreachable
                                     else len(MODELS) - len(set(loaded) & set(MODELS)))
            report["after_restart"] = asyncio.run(_normal(port, 10, args.concurrency,
                                                          args.rate))
            stop.set()
            report["attackers_seen"] = results.get(timeout=60)
            attack.join(30)
        finally:
            if attack is not None and attack.is_alive():
                attack.terminate()
            server.stop()
            report["log_tail"] = (root / "server.log").read_text(errors="replace")[-1500:]
    base, hit = report["baseline"]["p99_ms"], report["attack"]["p99_ms"]
    report["p99_ratio"] = round(hit / base, 2) if base and hit else None
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(json.dumps({k: v for k, v in report.items() if k != "log_tail"}, indent=2))


if __name__ == "__main__":
    main()
