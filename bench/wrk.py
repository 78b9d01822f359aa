"""Drive wrk (``apt-get install wrk``), a C load generator, and read its numbers back.

On a 2-core machine the load generator shares the CPU with the server, so its cost per
request matters: wrk spends a few microseconds per request where the Python generator in
``loadgen.py`` spends ~90. The Lua script sets the body from a file and prints wrk's summary as
one JSON line, so nothing is scraped from wrk's human-readable text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
if #body > 0 then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n@@{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class WrkResult:
    """The same questions ``loadgen.LoadResult`` answers, from wrk's summary."""

    concurrency: int
    duration_s: float
    requests: int
    status_errors: int
    socket_errors: int
    p50_s: float
    p90_s: float
    p99_s: float

    @property
    def rps(self) -> float:
        """Successful (2xx/3xx) answers per second: a refused request is not throughput."""
        return (self.requests - self.status_errors) / self.duration_s

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    def percentile(self, p: float) -> float:
        return {50: self.p50_s, 90: self.p90_s, 99: self.p99_s}[int(p)]


def run(url: str, body: bytes, content_type: str, concurrency: int, duration_s: float,
        threads: int = 1, timeout_s: float = 30.0, warmup_s: float = 1.0) -> WrkResult:
    """Closed loop: ``concurrency`` keep-alive connections on ``threads`` wrk threads."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(SCRIPT)
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        env = {**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_CONTENT_TYPE": content_type}

        def once(seconds: float) -> str:
            cmd = ["wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}",
                   f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s", "-s",
                   str(script), url]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            return out.stdout

        if warmup_s > 0:
            once(warmup_s)
        stdout = once(duration_s)
    line = next(x for x in stdout.splitlines() if x.startswith("@@"))
    s = json.loads(line[2:])
    return WrkResult(concurrency, s["duration_us"] / 1e6, s["requests"], s["status_errors"],
                     s["socket_errors"], s["p50_us"] / 1e6, s["p90_us"] / 1e6, s["p99_us"] / 1e6)
