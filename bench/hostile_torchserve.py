"""The servers ``hostile.py`` attacks: modelserve and TorchServe 0.12, started the same way.

Both serve the same archives (``ts_dropin_setup``: TorchScript models archived by
``torch-model-archiver`` with the TorchServe-style handler) from one ``config.properties``,
with the same command line (``torchserve`` / ``modelserve torchserve`` ``--start
--foreground --ncs --ts-config ... --models ...``), so that only the server differs. Each
runs in a session of its own under a lowered RLIMIT_NOFILE (soft and hard, set before exec:
the launcher, the JVM or frontend, and the workers all inherit it), and a stop ends the whole
session: the JVM included, which outlives a killed ``torchserve`` launcher otherwise.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ts_dropin_setup as setup  # noqa: E402
from serve_bench import free_port  # noqa: E402
from ts_dropin import frontend_pid  # noqa: E402

HOST = "127.0.0.1"
SERVERS = ("modelserve", "torchserve")
DEFAULT_VENV = setup.HERE / "out" / "ts-e2e-venv"
LOAD_MODEL = "linear"  # the normal load's model; the others are there to be lost, or not


def ts_venv(venv: Path) -> Path:
    """The TorchServe 0.12 venv: used as it is when it has torchserve, else built."""
    if (venv / "bin" / "torchserve").exists():
        return setup.check_venv(venv)
    return setup.ensure_venv(venv)


def build_store(venv: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """The model store both servers read, and its archives (name -> .mar)."""
    store = work / "store"
    return store, setup.build_archives(venv, store, work)


def body() -> bytes:
    """The normal load's JSON body (ts_dropin's, seeded)."""
    return setup.bodies()[LOAD_MODEL]


def _group(pgid: int, zombies: bool = False) -> list[int]:
    """The live processes of a process group (and the dead ones not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and (zombies or fields[0] != "Z"):
                found.append(int(entry.name))
    return found


class Server:
    """One server, ``kind`` modelserve or torchserve, with its own ports and folder; start
    and stop it as often as needed (the ports stay)."""

    def __init__(self, kind: str, work: Path, store: Path, archives: dict[str, str],
                 venv: Path, nofile: int, extra: dict) -> None:
        self.kind, self.work, self.store, self.archives = kind, work, store, archives
        self.venv, self.nofile, self.extra = venv, nofile, extra
        self.ports = [free_port() for _ in range(5)]  # inference, management, metrics, gRPC
        self.oip_port = free_port()  # modelserve's OIP v2 gRPC (8085 unless told)
        work.mkdir(parents=True, exist_ok=True)
        self.props = work / "config.properties"
        setup.config_properties(self.props, self.ports, archives)
        self.log = work / "server.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def expected(self) -> list[str]:
        return list(self.archives)

    def _command(self) -> tuple[list[str], dict[str, str]]:
        flags = ["--start", "--foreground", "--ncs", "--model-store", str(self.store),
                 "--ts-config", str(self.props),
                 "--models", *(f"{m}={a}" for m, a in self.archives.items())]
        if self.kind == "torchserve":
            bin_dir = self.venv / "bin"
            return [str(bin_dir / "torchserve"), *flags], setup.server_env(self.work, bin_dir)
        # --config's extra settings: as MODELSERVE_* variables, which beat config.properties
        extra = {f"MODELSERVE_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                 for k, v in self.extra.items()}
        env = {**setup.server_env(self.work), "MODELSERVE_GRPC_INFERENCE_PORT":
               str(self.oip_port), **extra}
        return [sys.executable, "-m", "modelserve", "torchserve", *flags], env

    def start(self, timeout: float = 180) -> float:
        """Start; seconds until /ping answers 200 (inf: not within ``timeout``, or it
        exited)."""
        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        cmd, env = self._command()
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.work, preexec_fn=limited,
                                         start_new_session=True)
        while time.monotonic() - started < timeout and self.proc.poll() is None:
            if self.get(self.ports[0], "/ping")[0] == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        return float("inf")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def frontend(self) -> int:
        """The process that holds the listeners: the JVM, or ``modelserve start``."""
        return frontend_pid(self.proc.pid, self.kind == "torchserve") if self.proc else 0

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
        """The registered models (management ``GET /models``); None: unreachable."""
        status, text = self.get(self.ports[1], "/models")
        return [m["modelName"] for m in json.loads(text)["models"]] if status == 200 else None

    def ready_models(self) -> list[str] | None:
        """The registered models whose workers are all READY; None: unreachable."""
        registered = self.models()
        if registered is None:
            return None
        ready = []
        for name in registered:
            status, text = self.get(self.ports[1], f"/models/{name}")
            try:
                workers = json.loads(text)[0].get("workers", []) if status == 200 else []
            except (ValueError, IndexError, KeyError, AttributeError):
                workers = []
            if workers and all(w.get("status") == "READY" for w in workers):
                ready.append(name)
        return ready

    def metrics(self) -> dict[str, float]:
        """modelserve's HTTP hardening counters (``modelserve_http_*``; TorchServe: none)."""
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

    def stop(self) -> float:
        """SIGTERM to the whole session, SIGKILL to what is left after 60 s; seconds until
        no process of it is left (the JVM and every worker)."""
        if self.proc is None:
            return 0.0
        started, pgid = time.monotonic(), self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        while _group(pgid) and time.monotonic() - started < 60:
            time.sleep(0.1)
        if _group(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _group(pgid):
                time.sleep(0.1)
        self.proc.wait()
        self.proc = None
        stopped = time.monotonic() - started
        waited = time.monotonic()  # a JVM orphaned by its launcher: until init reaps it
        while _group(pgid, zombies=True) and time.monotonic() - waited < 10:
            time.sleep(0.1)
        return stopped

    def log_tail(self, chars: int = 1500) -> str:
        logs = [self.log, self.work / "logs" / "ts_log.log"]
        return "".join(p.read_text(errors="replace")[-chars:] for p in logs if p.exists())
