"""Autoscaling over real HTTP with real workers: a slow handler under a load step gets more
workers and gives them back after the cool-down; a model at zero answers its first request;
a worker given back to another model drains its batches; a crash-looping model does not
grow; an explicit scale call pins the count. Every request is checked: none is lost."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelserve import ipc
from modelserve.worker import lanes
from modelserve.worker.channel import Channel
from tests.conftest import Server, handler_archive, pid_alive, wait_for, wait_logged

SLOW_HANDLER = textwrap.dedent('''
    """Test handler: sleeps as asked (no CPU), answers its pid; dies on request."""
    import os
    import time


    class SlowHandler:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            out = []
            for row in data:
                body = row.get("data", row.get("body"))
                if body.get("die"):
                    os._exit(3)
                time.sleep(body.get("sleep", 0))
                out.append({"pid": os.getpid()})
            return out
''')

ONE_AT_A_TIME = {"batchSize": 1, "maxBatchDelay": 1}
KNOBS = {"scale_up_after_ms": 300, "cool_down_s": 3, "interval_ms": 100}
CORES = len(os.sched_getaffinity(0))  # a pool's threads: these shared among its workers


@pytest.fixture(scope="module")
def scale_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, store = tmp_path_factory.mktemp("scale-src"), tmp_path_factory.mktemp("scale-store")
    for name, workers in (("slow", (1, 3)), ("zero", (0, 1)), ("pinned", (1, 1))):
        handler_archive(src, store, name, SLOW_HANDLER,
                        {**ONE_AT_A_TIME, "minWorkers": workers[0], "maxWorkers": workers[1]})
    return store


@pytest.fixture
def start(scale_store: Path, tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def make(models: list[str], cores: int = 8, **knobs) -> Server:
        srv = Server(tmp_path / f"s{len(servers)}", scale_store, models,
                     extra_config={"autoscale": {**KNOBS, "cores": cores, **knobs}})
        srv.root.mkdir()
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        assert not srv.stop()


@dataclass
class Load:
    """``clients`` threads, each sending its next request when the last is answered."""

    srv: Server
    model: str
    clients: int
    body: dict
    answers: list[tuple[int, int | None, float]] = field(default_factory=list)  # status, pid
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(self.clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                r = client.post(f"{self.srv.inference}/predictions/{self.model}", json=self.body)
                pid = r.json().get("pid") if r.status_code == 200 else None
                self.answers.append((r.status_code, pid, time.monotonic()))

    def end(self) -> list[tuple[int, int | None, float]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(150)
        return self.answers


def describe(srv: Server, model: str) -> dict:
    return httpx.get(f"{srv.management}/models/{model}", timeout=30).json()[0]


def ready_workers(srv: Server, model: str) -> int:
    return sum(w["status"] == "READY" for w in describe(srv, model)["workers"])


def scale_events(srv: Server, model: str) -> dict[tuple[str, str], float]:
    """modelserve_scale_events_total of ``model`` by (direction, reason)."""
    text = httpx.get(f"{srv.metrics}/metrics", timeout=30).text
    out = {}
    for labels, value in re.findall(r"^modelserve_scale_events_total{(.*)} (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if got["model_name"] == model:
            out[(got["direction"], got["reason"])] = float(value)
    return out


def test_step_load_adds_workers_then_the_cool_down_takes_them_back(start):
    srv = start(["slow.mar", "pinned.mar"])
    desc = describe(srv, "slow")
    assert (desc["minWorkers"], desc["maxWorkers"], len(desc["workers"])) == (1, 3, 1)
    assert desc["autoscale"]["enabled"] and desc["autoscale"]["lastDecision"] is None
    assert not describe(srv, "pinned")["autoscale"]["enabled"]  # maxWorkers = minWorkers

    load = Load(srv, "slow", clients=8, body={"sleep": 0.3})
    wait_for(lambda: ready_workers(srv, "slow") == 3, timeout=60)
    grown = describe(srv, "slow")
    assert grown["autoscale"]["lastChange"]["direction"] == "up"
    assert grown["autoscale"]["lastChange"]["reason"] == "wait"
    assert {w["threads"] for w in grown["workers"]} == {max(1, CORES // 3)}
    assert len(describe(srv, "pinned")["workers"]) == 1
    answers = load.end()
    assert [a for a in answers if a[0] != 200] == []
    assert len({pid for _, pid, _ in answers}) == 3  # all three served

    wait_for(lambda: len(describe(srv, "slow")["workers"]) == 1, timeout=60)
    back = describe(srv, "slow")
    assert back["autoscale"]["lastChange"]["direction"] == "down"
    assert back["autoscale"]["lastChange"]["reason"] in ("idle", "low_use")
    assert back["workers"][0]["threads"] == CORES  # the cores again
    events = scale_events(srv, "slow")
    assert events[("up", "wait")] == 2 and events[("down", "idle")] >= 1
    wait_logged(srv, "autoscale slow/1.0: 1 -> 2 worker(s), up (wait)",
                "autoscale slow/1.0: 2 -> 1 worker(s), down")


def test_steady_load_holds_the_count(start):
    srv = start(["slow.mar"])
    load = Load(srv, "slow", clients=6, body={"sleep": 0.3})
    wait_for(lambda: ready_workers(srv, "slow") == 3, timeout=60)
    seen = set()
    for _ in range(30):  # 6 s under the same load: no worker is removed and re-added
        seen.add(len(describe(srv, "slow")["workers"]))
        time.sleep(0.2)
    assert [a for a in load.end() if a[0] != 200] == []
    assert seen == {3}
    assert scale_events(srv, "slow").get(("down", "low_use"), 0) == 0


def test_scale_to_zero_and_the_first_request_after(start):
    srv = start(["zero.mar"])
    assert describe(srv, "zero")["workers"] == []
    assert httpx.get(f"{srv.inference}/v2/models/zero/ready").status_code == 200
    began = time.monotonic()
    r = httpx.post(f"{srv.inference}/predictions/zero", json={"sleep": 0}, timeout=120)
    first_s = time.monotonic() - began
    assert r.status_code == 200, r.text
    pid = r.json()["pid"]
    assert describe(srv, "zero")["autoscale"]["lastChange"]["reason"] == "demand"
    print(f"first request at zero answered in {first_s * 1000:.0f} ms")

    wait_for(lambda: describe(srv, "zero")["workers"] == [], timeout=60)
    wait_for(lambda: not pid_alive(pid), timeout=15)
    wait_logged(srv, "autoscale zero/1.0: 1 -> 0 worker(s), down (idle)")
    # and again, several at once: all wait for the one worker, none fails
    load = Load(srv, "zero", clients=4, body={"sleep": 0.1})
    wait_for(lambda: len(load.answers) >= 8, timeout=60)
    assert [a for a in load.end() if a[0] != 200] == []
    assert scale_events(srv, "zero")[("up", "demand")] == 2


def test_a_worker_given_back_to_another_model_drains_its_batches(start):
    """Two cores: slow takes both while alone; when pinned gets busy, slow gives one back,
    and the requests already in that worker are answered, not lost."""
    srv = start(["slow.mar", "pinned.mar"], cores=2)
    load = Load(srv, "slow", clients=4, body={"sleep": 1.5})
    wait_for(lambda: ready_workers(srv, "slow") == 2, timeout=60)
    pids = {w["pid"] for w in describe(srv, "slow")["workers"]}
    time.sleep(2)  # both busy with a batch running and one behind it
    other = Load(srv, "pinned", clients=2, body={"sleep": 0.2})
    given_back = wait_for(lambda: describe(srv, "slow")["autoscale"]["currentWorkers"] == 1
                          and time.monotonic(), timeout=60)
    wait_for(lambda: len(describe(srv, "slow")["workers"]) == 1, timeout=60)  # drained
    [kept] = [w["pid"] for w in describe(srv, "slow")["workers"]]
    [drained] = pids - {kept}
    wait_for(lambda: not pid_alive(drained), timeout=30)
    answers = load.end() + other.end()
    assert [a for a in answers if a[0] != 200] == []
    assert max(t for _, pid, t in answers if pid == drained) > given_back  # answered after
    last = describe(srv, "slow")["autoscale"]["lastChange"]
    assert (last["direction"], last["reason"]) == ("down", "budget")
    wait_logged(srv, "down (budget)")


def test_a_crash_looping_model_does_not_scale_up(start):
    srv = start(["slow.mar"])
    load = Load(srv, "slow", clients=6, body={"sleep": 0.3})
    wait_for(lambda: ready_workers(srv, "slow") >= 2, timeout=60)
    load.end()
    wait_for(lambda: len(describe(srv, "slow")["workers"]) == 1, timeout=60)
    ups = scale_events(srv, "slow")[("up", "wait")]

    stop = threading.Event()

    def killer() -> None:  # a worker death every second
        while not stop.wait(1.0):
            httpx.post(f"{srv.inference}/predictions/slow", json={"die": True}, timeout=60)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    wait_logged(srv, "of slow died", timeout=60)
    load = Load(srv, "slow", clients=6, body={"sleep": 0.3})
    wait_logged(srv, "up refused (crash_loop)", timeout=60)
    time.sleep(3)
    stop.set()
    load.end()
    thread.join(60)
    assert scale_events(srv, "slow")[("up", "wait")] == ups
    assert len(describe(srv, "slow")["workers"]) <= 1


def test_an_explicit_scale_call_sets_the_bounds(start):
    srv = start(["slow.mar"])
    r = httpx.put(f"{srv.management}/models/slow",
                  params={"min_worker": 2, "max_worker": 2, "synchronous": "true"}, timeout=120)
    assert r.status_code == 200, r.text
    load = Load(srv, "slow", clients=8, body={"sleep": 0.3})
    time.sleep(3)  # loaded, and pinned at 2
    desc = describe(srv, "slow")
    assert (desc["minWorkers"], desc["maxWorkers"], len(desc["workers"])) == (2, 2, 2)
    assert not desc["autoscale"]["enabled"]
    r = httpx.put(f"{srv.management}/models/slow",
                  params={"min_worker": 1, "max_worker": 2, "synchronous": "true"}, timeout=120)
    assert r.status_code == 200
    wait_for(lambda: ready_workers(srv, "slow") == 2, timeout=60)  # back up, within the bounds
    assert [a for a in load.end() if a[0] != 200] == []
    assert len(describe(srv, "slow")["workers"]) <= 2


def test_off_in_config_keeps_min_workers(start):
    srv = start(["slow.mar"], enabled=False)
    load = Load(srv, "slow", clients=6, body={"sleep": 0.2})
    time.sleep(3)
    assert len(describe(srv, "slow")["workers"]) == 1
    assert not describe(srv, "slow")["autoscale"]["enabled"]
    assert [a for a in load.end() if a[0] != 200] == []


def test_busy_models_share_the_cores_and_one_alone_gets_them_back(start):
    """Two models busy at once: each worker runs on the cores shared among both; once one
    is idle the other's worker gets its whole share again."""
    srv = start(["slow.mar", "pinned.mar"])

    def threads() -> list[int]:
        return [describe(srv, m)["workers"][0]["threads"] for m in ("slow", "pinned")]

    assert threads() == [CORES, CORES]
    loads = [Load(srv, m, 1, {"sleep": 0.05}) for m in ("slow", "pinned")]
    try:
        wait_for(lambda: threads() == [max(1, CORES // 2)] * 2, timeout=30)
    finally:
        pinned = loads[1].end()
    wait_for(lambda: threads()[0] == CORES, timeout=30)
    assert [a for a in loads[0].end() + pinned if a[0] != 200] == []


@contextlib.contextmanager
def busy_gate(threads: int) -> Iterator[tuple[socket.socket, Channel, lanes.Gate]]:
    """A worker's adaptive gate of two lanes on ``threads``, fed SETTLE busy batches (the
    level that opens lanes where threads allow), with the frontend's end of its socket."""
    frontend, worker = socket.socketpair()
    try:
        channel = Channel(worker)
        gate = lanes.Gate(channel, 2, adaptive=True, threads=threads)
        channel.on_threads = gate.set_threads
        busy(gate)
        frontend.settimeout(5)
        yield frontend, channel, gate
    finally:
        frontend.close()
        worker.close()


def busy(gate: lanes.Gate) -> None:
    for _ in range(lanes.SETTLE):
        gate.record(True, 0.0, 0.035, 0.030)


def new_threads(frontend: socket.socket, channel: Channel, n: int) -> None:
    """The frontend says ``n`` threads; the worker reads it with its next batch."""
    frontend.sendall(ipc.encode({"op": "threads", "n": n}))
    frontend.sendall(ipc.encode({"op": "infer", "id": 1, "reqs": []}))
    assert channel.next_batch()["id"] == 1


def test_the_worker_runs_on_the_threads_its_pool_now_wants():
    """The frontend's threads frame reaches the lanes: fewer threads close the extra lanes."""
    with busy_gate(threads=2) as (frontend, channel, gate):
        assert gate.open == 2
        new_threads(frontend, channel, 1)
        assert (gate.threads, gate.open, gate.threads_for(0)) == (1, 1, 1)
        ipc.recv_frame(frontend)  # lanes 2 when they opened
        assert ipc.recv_frame(frontend) == {"op": "lanes", "n": 1}
        busy(gate)  # busy again: no more lanes than threads
        assert gate.open == 1


def test_a_worker_started_among_several_opens_its_lanes_once_it_serves_alone():
    """A worker started on one thread of a pool of two is planned two lanes (the threads it
    would get alone): one stays open until the pool shrinks and its threads frame says two
    (before, it kept one lane on two threads: the bench's step at 66 % of the best fixed)."""
    assert lanes.plan(lanes.AUTO, True, None, max(1, 2)) == 2
    with busy_gate(threads=1) as (frontend, channel, gate):
        assert gate.open == 1  # one thread: one lane
        new_threads(frontend, channel, 2)
        busy(gate)
        assert (gate.open, gate.threads_for(0), gate.threads_for(1)) == (2, 1, 1)
        assert ipc.recv_frame(frontend) == {"op": "lanes", "n": 2}
