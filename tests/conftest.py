"""Fixtures: example archives built once, and a real server on free loopback ports."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelserve.archive import create_archive

ECHO_HANDLER = textwrap.dedent('''
    """Test handler: echoes JSON, and misbehaves on request (no torch import: loads fast)."""
    import os
    import time


    class EchoHandler:
        def initialize(self, context):
            self.context = context

        def handle(self, data, context):
            out = []
            for row in data:
                body = row.get("data", row.get("body"))
                if isinstance(body, dict):
                    if body.get("boom"):
                        raise RuntimeError("kaboom")
                    if "sleep" in body:
                        time.sleep(body["sleep"])
                out.append({"echo": body, "pid": os.getpid(), "batch": len(data)})
            return out
''')


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Ports 10000 up to the ephemeral range, split between pytest-xdist's processes (each
    knows only the ports it handed out itself)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    width = max(0, _EPHEMERAL_LOW - 10000) // max(1, count)
    return 10000 + index * width, 10000 + (index + 1) * width


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range and not handed out
    before in this run. A port the kernel picks (bind to 0) is one any outgoing connection
    may take as its own local port before the server binds it (a CI run lost a test to
    that: "address already in use"); below the range only another listener can."""
    low, high = _port_range()
    for _ in range(1000 if high - low > 2000 else 0):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range (or every try taken): the kernel's
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ppid(pid: int) -> int:
    """``pid``'s parent (from /proc; OSError once it is gone)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = ppid(int(entry.name))
        except OSError:
            continue
        if parent == pid:
            children.add(int(entry.name))
    return children


def is_zygote(pid: int) -> bool:
    """The worker zygote; the workers it forks share its command line but not its parent."""
    try:
        return b"modelserve.worker.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy and return that value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def wait_logged(server, *needles: str, timeout: float = 15.0) -> str:
    """Wait until every needle is in the server's log and return the log.

    A log line can land after the HTTP answer it belongs to (another thread or process writes
    it), so a test asserts on the log only by waiting for the very lines it asserts."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        missing = [n for n in needles if n not in log]
        if not missing:
            return log
        if time.monotonic() >= deadline:
            raise AssertionError(f"not logged within {timeout} s: {missing}\n{log[-4000:]}")
        time.sleep(0.05)


def named_processes(title: str, root: int) -> list[int]:
    """Live descendants of ``root`` whose name (``/proc/PID/comm``, 15 characters at most)
    is ``title``: a zygote-forked worker is named ``ms:<model>``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != title[:15]:
                continue
            pid = parent = int(entry.name)
            while parent > 1 and parent != root:
                parent = ppid(parent)
        except OSError:
            continue
        if parent == root and pid_alive(pid):
            found.append(pid)
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Server:
    """A ``modelserve start`` subprocess; always stopped by the fixture that made it."""

    root: Path
    store: Path
    load_models: list[str]
    extra_config: dict = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    # Token auth is off in tests unless a test opts in (tests/integration/test_auth.py).
    auth: bool = False
    # "https": the HTTP listeners serve TLS (tests/integration/test_tls.py); ``verify`` is
    # httpx's for the readiness check (an ssl.SSLContext that trusts the test CA)
    scheme: str = "http"
    verify: Any = True

    def __post_init__(self) -> None:
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc")}
        self._addresses()
        self.log_path = self.root / "server.log"

    def _addresses(self) -> None:
        self.inference = f"{self.scheme}://127.0.0.1:{self.ports['inference']}"
        self.management = f"{self.scheme}://127.0.0.1:{self.ports['management']}"
        self.metrics = f"{self.scheme}://127.0.0.1:{self.ports['metrics']}"
        self.grpc = f"127.0.0.1:{self.ports['grpc']}"

    def start(self, timeout: float = 120) -> Server:
        """Start, and start again on new ports if a port picked free was taken before the
        server bound it (free_port's race with other sockets of this machine)."""
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt == 2 or "address already in use" not in self.log():
                    raise
            renamed = {old: free_port() for old in self.ports.values()}
            self.ports = {k: renamed[v] for k, v in self.ports.items()}
            self.extra_config = {k: renamed.get(v, v) if isinstance(v, int) else v
                                 for k, v in self.extra_config.items()}
            self._addresses()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> Server:
        config = {
            "inference_port": self.ports["inference"],
            "management_port": self.ports["management"],
            "metrics_port": self.ports["metrics"],
            "grpc_inference_port": self.ports["grpc"],
            # TorchServe's gRPC APIs: off unless a test gives them ports (the TorchServe
            # personality would take 7070/7071, which servers running side by side share)
            "grpc_torchserve_inference_port": 0,
            "grpc_torchserve_management_port": 0,
            "model_store": str(self.store),
            "load_models": self.load_models,
            "workdir": str(self.root / "work"),
            **self.extra_config,
        }
        config_path = self.root / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve", "start", "--config", str(config_path),
             *([] if self.auth else ["--disable-token-auth"]), *self.extra_args],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=env,
            cwd=self.root,  # relative paths it writes (logs/, key_file.json) stay in root
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                ping = httpx.get(f"{self.inference}/ping", timeout=1, verify=self.verify)
                if ping.status_code == 200:
                    if "Press Ctrl-C" in self.log():
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def zygote_pids(self) -> set[int]:
        assert self.proc is not None
        return {pid for pid in child_pids(self.proc.pid) if is_zygote(pid)}

    def worker_pids(self) -> set[int]:
        """Spawned workers (the server's children) and those the zygote forked."""
        assert self.proc is not None
        zygotes = self.zygote_pids()
        forked = set().union(*(child_pids(z) for z in zygotes))
        return (child_pids(self.proc.pid) - zygotes) | forked

    def stop(self, timeout: float = 30) -> set[int]:
        """SIGTERM, wait, and return any worker that outlived the server (should be none)."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        workers = self.worker_pids() | self.zygote_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in workers):
            time.sleep(0.05)
        survivors = {p for p in workers if pid_alive(p)}
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        return survivors


@pytest.fixture(scope="session")
def example_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits, digits_onnx, resnet and resnet_onnx archives, built once per test run."""
    from modelserve.examples.build import build_all

    store = tmp_path_factory.mktemp("store")
    build_all(store)
    return store


def handler_archive(src: Path, store: Path, name: str, handler_text: str | None,
                    config: dict, handler_file: Path | None = None,
                    version: str = "1.0") -> None:
    """``<store>/<name>.mar`` (``version``): a handler (``handler_text`` written to
    ``<name>_handler.py``, or ``handler_file``) and a CPU model-config.yaml with ``config``."""
    folder = src / name
    folder.mkdir()
    if handler_file is None:
        handler_file = folder / f"{name}_handler.py"
        handler_file.write_text(handler_text or "")
    config_file = folder / "model-config.yaml"
    config_file.write_text(yaml.safe_dump({"deviceType": "cpu", **config}))
    create_archive(model_name=name, version=version, handler=str(handler_file),
                   config_file=config_file, export_path=store, force=True)


@pytest.fixture(scope="session")
def model_store(example_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples plus the test-only echo archive."""
    handler_archive(tmp_path_factory.mktemp("echo-src"), example_store, "echo", ECHO_HANDLER,
                    {"batchSize": 8, "maxBatchDelay": 20})
    return example_store


@pytest.fixture(scope="session")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the integration tests: digits, digits_onnx and echo loaded at start."""
    srv = Server(tmp_path_factory.mktemp("server"), model_store,
                 ["digits=digits.mar", "digits_onnx=digits_onnx.mar", "echo.mar"])
    srv.start()
    yield srv
    survivors = srv.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


@pytest.fixture
def isolated_server(model_store: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own (for tests that break things)."""
    srv = Server(tmp_path, model_store, ["echo.mar"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def digits_model(example_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The digits TorchScript model loaded directly, for comparing served answers."""
    import zipfile

    import torch

    out = tmp_path_factory.mktemp("digits-direct")
    with zipfile.ZipFile(example_store / "digits.mar") as zf:
        zf.extract("digits.pt", out)
    return torch.jit.load(str(out / "digits.pt")).eval()


def copy_archive(store: Path, name: str, new_name: str) -> Path:
    target = store / new_name
    shutil.copy(store / name, target)
    return target


# Handler-side source both streaming suites embed (handlers are files in archives, so the
# shared part is text): ``n`` chunks ``delay`` s apart, an error at chunk ``fail_at``; the
# ``count_file`` holds how many were produced, then "<n> closed" once the generator ended
# (finished, failed, or closed because the client went away). Needs ``import time``.
COUNTED_CHUNKS = textwrap.dedent('''
    def counted_chunks(spec, make_chunk):
        n, delay, fail_at = spec.get("n", 3), spec.get("delay", 0.0), spec.get("fail_at")
        count_file = spec.get("count_file")
        produced = 0
        try:
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                if fail_at == i:
                    raise RuntimeError(f"failed at chunk {i}")
                produced += 1
                if count_file:
                    with open(count_file, "w") as f:
                        f.write(str(produced))
                yield make_chunk(i)
        finally:
            if count_file:
                with open(count_file, "w") as f:
                    f.write(f"{produced} closed")
''')


IDENTITY_HANDLER = textwrap.dedent('''
    """Test handler, TorchServe-style (no handle_v2): answers an OIP v2 request with its own
    inputs, plus the batch size it was run in and the request's parameters (as JSON)."""
    import json
    import time


    class IdentityHandler:
        def initialize(self, context):
            self.context = context

        def handle(self, data, context):
            out = []
            for row in data:
                body = row["body"]
                params = body.get("parameters", {})
                if params.get("sleep"):
                    time.sleep(params["sleep"])
                if params.get("fail"):
                    raise ValueError("asked to fail")
                tensors = [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"],
                            "data": t["data"]} for t in body["inputs"]]
                tensors.append({"name": "batch", "datatype": "INT32", "shape": [1],
                                "data": [len(data)]})
                tensors.append({"name": "params", "datatype": "BYTES", "shape": [1],
                                "data": [json.dumps(params, sort_keys=True)]})
                out.append({"outputs": tensors})
            return out
''')


# TorchServe's examples/stateful/sequence_batching/stateful_handler.py, with a dict for its
# LRU cache: each sequence's running sum, kept in the worker's memory; 0 ends the sequence
# (the end header, as sequence_continuous_batching's handler sends it). The answer's
# x-worker-pid header says which worker ran it; a body "?" answers the size of its batch,
# "sleep S" sleeps S seconds.
STATEFUL_HANDLER = textwrap.dedent('''
    import os
    import time


    class Stateful:
        def initialize(self, context):
            self.cache = {}

        def handle(self, data, context):
            out = []
            for idx, row in enumerate(data):
                sequence = context.get_sequence_id(idx)
                body = row.get("data") or row.get("body")
                if isinstance(body, (bytes, bytearray)):
                    body = body.decode()
                if context.get_request_header(idx, context.header_key_sequence_start):
                    self.cache[sequence] = 0
                context.set_response_header(idx, "x-worker-pid", str(os.getpid()))
                if body == "?" or body.startswith("sleep"):
                    if body != "?":
                        time.sleep(float(body.split()[1]))
                    out.append(str(len(data)) if body == "?" else "slept")
                    continue
                if int(body) == 0:
                    self.cache.pop(sequence, None)
                    context.set_response_header(idx, context.header_key_sequence_end, sequence)
                    out.append("end")
                    continue
                self.cache[sequence] = self.cache.get(sequence, 0) + int(body)
                out.append(str(self.cache[sequence]))
            return out
''')


# a continuous-batching handler written as TorchServe's are (its test_data/streaming/
# stream_handler.py): state per request id in context.cache, one character per step,
# context.stopping_criteria saying when a request is done
CONTINUOUS_HANDLER = '''
import json
import time

from ts.torch_handler.base_handler import BaseHandler


class Generator(BaseHandler):
    """Each step adds one character (the next in the alphabet) to every running prompt."""

    def initialize(self, context):
        self.context = context
        context.cache = {}
        self.initialized = True

    def preprocess(self, data):
        ids = list(self.context.request_ids.values())
        for req_id, item in zip(ids, data):
            if req_id not in self.context.cache:
                body = item.get("body")
                if isinstance(body, (bytes, bytearray)):
                    body = json.loads(body)
                self.context.cache[req_id] = {"prompt": body["prompt"], "text": body["prompt"],
                                              "left": body["max_new_tokens"]}
            elif item != {}:
                raise ValueError(f"a running request came with data: {item!r}")
        return ids

    def inference(self, ids):
        time.sleep(0.05)
        batch = sorted(self.context.cache[i]["prompt"] for i in ids)
        out = []
        for req_id in ids:
            state = self.context.cache[req_id]
            token = chr(ord(state["text"][-1]) + 1)
            state["text"] += token
            state["left"] -= 1
            out.append({"token": token, "batch": batch})
        return out

    def postprocess(self, out):
        ids = list(self.context.request_ids.values())
        self.context.stopping_criteria = [self._stop(req_id) for req_id in ids]
        return [json.dumps(item) + "\\n" for item in out]

    def _stop(self, req_id):
        def done(result):
            if self.context.cache[req_id]["left"] > 0:
                return False
            del self.context.cache[req_id]
            return True
        return done
'''


@pytest.fixture(scope="session")
def v2_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model store plus ``identity``, an echo of v2 tensors (every datatype)."""
    handler_archive(tmp_path_factory.mktemp("identity-src"), model_store, "identity",
                    IDENTITY_HANDLER, {"batchSize": 16, "maxBatchDelay": 50})
    return model_store


@pytest.fixture(scope="session")
def v2_server(v2_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for the OIP v2 tests (REST and gRPC): the four examples and ``identity``."""
    srv = Server(tmp_path_factory.mktemp("v2-server"), v2_store,
                 ["digits=digits.mar", "digits_onnx=digits_onnx.mar", "resnet=resnet.mar",
                  "resnet_onnx=resnet_onnx.mar", "identity.mar"])
    srv.start(timeout=240)
    yield srv
    survivors = srv.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


@pytest.fixture(scope="session")
def direct_models(example_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """name -> callable(np.ndarray) -> np.ndarray: each example model run directly (TorchScript
    with torch, ONNX with onnxruntime), to compare served outputs with."""
    import zipfile

    import numpy as np
    import onnxruntime as ort
    import torch

    out = tmp_path_factory.mktemp("direct")
    models = {}
    for name, member in (("digits", "digits.pt"), ("resnet", "resnet.pt"),
                         ("digits_onnx", "digits.onnx"), ("resnet_onnx", "resnet.onnx")):
        with zipfile.ZipFile(example_store / f"{name}.mar") as zf:
            path = zf.extract(member, out / name)
        if member.endswith(".pt"):
            module = torch.jit.load(path).eval()

            def run(x: np.ndarray, module=module) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(x)).numpy()
        else:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

            def run(x: np.ndarray, session=session) -> np.ndarray:
                return session.run(None, {"input": x})[0]
        models[name] = run
    return models
