"""Batch lanes: one worker running several batches at once (modelserve.worker.lanes).

Unit tests of the pieces (the channel lanes share, the gate that opens lanes in auto, which
handlers may run in lanes), then a real server: batches that can only finish together (a
barrier), answers matched to their own requests while lanes run in parallel, streams and
their cancels across lanes, a lane that exits the process, and auto opening lanes for resnet
under load.
"""

from __future__ import annotations

import json
import shutil
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from modelserve import ipc, model_clock
from modelserve.examples.digits import load_split
from modelserve.handlers.tensor_handler import TensorHandler
from modelserve.worker import lanes
from modelserve.worker.channel import Channel
from modelserve.worker.loader import Handler, declares_thread_safe
from modelserve.worker.streaming import Streamer
from tests.conftest import COUNTED_CHUNKS, Server, handler_archive, wait_for


# -- the channel ---------------------------------------------------------------------------------
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Channel]]:
    frontend, worker = socket.socketpair()
    yield frontend, Channel(worker)
    frontend.close()
    worker.close()


def send(sock: socket.socket, *messages: dict) -> None:
    for message in messages:
        sock.sendall(ipc.encode(message))


def infer(batch_id: int) -> dict:
    return {"op": "infer", "id": batch_id, "reqs": []}


def test_channel_keeps_the_cancels_of_a_batch_still_waiting(pair):
    frontend, channel = pair
    send(frontend, infer(1), infer(2), {"op": "cancel", "id": 2, "idx": 0},
         {"op": "cancel", "id": 7, "idx": 0})  # 7: no such batch
    assert channel.next_batch()["id"] == 1
    assert channel.begin(1) == set()
    time.sleep(0.1)
    channel.poll()  # batch 2 and its cancel came while batch 1 ran
    channel.end(1)
    send(frontend, {"op": "cancel", "id": 1, "idx": 0})  # batch 1 already ended
    assert channel.next_batch()["id"] == 2
    assert channel.begin(2) == {0}
    channel.end(2)
    send(frontend, infer(3))
    assert channel.next_batch()["id"] == 3
    assert channel.begin(1) == set()  # the late cancel of batch 1 was not kept


def test_channel_answers_waiting_batches_before_a_stop(pair):
    frontend, channel = pair
    send(frontend, infer(1), infer(2), {"op": "stop"})
    assert channel.next_batch()["id"] == 1
    time.sleep(0.1)
    channel.poll()
    assert channel.closed
    assert channel.next_batch()["id"] == 2
    assert channel.next_batch() is None


def test_channel_tells_whether_a_frame_is_here_already(pair):
    frontend, channel = pair
    assert not channel.ready()
    send(frontend, infer(1), infer(2))
    time.sleep(0.05)
    assert channel.ready()  # on the socket
    assert channel.next_batch()["id"] == 1
    channel.poll()
    assert channel.ready()  # read in, not taken
    assert channel.next_batch()["id"] == 2
    assert not channel.ready()


def test_channel_ends_when_the_frontend_closes(pair):
    frontend, channel = pair
    frontend.close()
    assert channel.next_batch() is None and channel.closed


# -- the gate ------------------------------------------------------------------------------------
def read_frame(sock: socket.socket) -> dict:
    sock.settimeout(5)
    return ipc.recv_frame(sock)


def test_gate_opens_lanes_for_a_busy_model_and_closes_them_when_idle(pair):
    frontend, channel = pair
    gate = lanes.Gate(channel, 2, adaptive=True, threads=2)
    assert gate.open == 1
    for _ in range(lanes.SETTLE):  # batches back to back, 30 ms of 35 in the model
        gate.record(True, 0.0, 0.035, 0.030)
    assert gate.open == 2
    assert read_frame(frontend) == {"op": "lanes", "n": 2}
    for _ in range(lanes.SETTLE * 2):  # now each lane waits 4x longer than it works
        gate.record(False, 0.140, 0.035, 0.030)
    assert gate.open == 1
    assert read_frame(frontend) == {"op": "lanes", "n": 1}


def test_gate_close_level_scales_with_the_open_lanes(pair):
    """Four lanes running 1.4 batches at a time (each busy 35 %) stay open; at 0.8 (one
    request at a time, 20 % each) one lane on all the threads takes over."""
    _, channel = pair
    gate = lanes.Gate(channel, 4, adaptive=True, threads=4)
    for _ in range(lanes.SETTLE):
        gate.record(True, 0.0, 0.035, 0.030)
    assert gate.open == 4
    for _ in range(lanes.SETTLE * 4):
        gate.record(False, 0.065, 0.035, 0.030)
    assert gate.open == 4
    for _ in range(lanes.SETTLE * 4):
        gate.record(False, 0.140, 0.035, 0.030)
    assert gate.open == 1


def test_gate_closes_at_once_after_an_idle_spell_and_shares_threads(pair):
    _, channel = pair
    gate = lanes.Gate(channel, 2, adaptive=True, threads=3)
    assert [gate.threads_for(i) for i in range(2)] == [3, 3]  # lane 0 alone: all threads
    for _ in range(lanes.SETTLE):
        gate.record(True, 0.0, 0.035, 0.030)
    assert gate.open == 2
    assert [gate.threads_for(i) for i in range(2)] == [2, 1]
    gate.record(True, 0.0, 0.035, 0.030)
    gate.record(False, lanes.IDLE_S, 0.035, 0.030)  # fewer than SETTLE batches since opening
    assert gate.open == 1 and gate.threads_for(0) == 3


@pytest.mark.parametrize("queued, waited, batch, model", [
    (True, 0.0, 0.0004, 0.0003),  # queued, mostly model, but a model call of 0.3 ms (digits)
    (True, 0.0, 0.035, 0.010),    # queued, but the batch is mostly Python
    (False, 0.030, 0.035, 0.030),  # mostly model, but the lane waits half the time
    # concurrency 1: busy 92 % of the time, all model, but nothing behind the one request
    (False, 0.001, 0.012, 0.0115),
])
def test_gate_keeps_one_lane_where_more_would_not_pay(pair, queued, waited, batch, model):
    _, channel = pair
    gate = lanes.Gate(channel, 2, adaptive=True, threads=2)
    for _ in range(lanes.SETTLE * 4):
        gate.record(queued, waited, batch, model)
    assert gate.open == 1


@pytest.mark.parametrize("adaptive, lanes_", [(True, 2), (False, 1)])
def test_a_lone_lane_runs_a_small_model_on_one_thread(pair, adaptive, lanes_):
    """Batches of 0.3 ms of CPU on two threads (0.6 ms of work at most) gain nothing from an
    OpenMP team: after SETTLE batches lane 0 runs on one thread, also in a worker of one lane
    (a TorchServe handler); its work on one thread stays under WIDE_OPEN_S, so it stays."""
    _, channel = pair
    gate = lanes.Gate(channel, lanes_, adaptive=adaptive, threads=2)
    for _ in range(lanes.SETTLE - 1):
        gate.weigh(0.0003, threads=2)
    assert gate.threads_for(0) == 2  # not judged before SETTLE batches
    gate.weigh(0.0003, threads=2)
    assert gate.threads_for(0) == 1 and not gate.wide
    for _ in range(lanes.SETTLE * 2):  # the same work on one thread: 0.6 ms
        gate.weigh(0.0006, threads=1)
    assert gate.threads_for(0) == 1


def test_a_lone_lane_goes_back_to_all_threads_when_the_work_grows(pair):
    """Work of 1.5 ms (between the levels) keeps each state; 5 ms on one thread (a heavier
    input) pays for the team again; resnet's 10 ms on two threads keeps it."""
    _, channel = pair
    gate = lanes.Gate(channel, 1, adaptive=False, threads=2)
    for _ in range(lanes.SETTLE):
        gate.weigh(0.00075, threads=2)  # 1.5 ms of work: stays wide
    assert gate.wide
    for _ in range(lanes.SETTLE * 2):
        gate.weigh(0.0003, threads=2)
    assert not gate.wide
    for _ in range(lanes.SETTLE * 2):
        gate.weigh(0.0015, threads=1)  # 1.5 ms: stays on one
    assert not gate.wide
    for _ in range(lanes.SETTLE * 2):
        gate.weigh(0.005, threads=1)
    assert gate.wide and gate.threads_for(0) == 2
    for _ in range(lanes.SETTLE * 2):
        gate.weigh(0.010, threads=2)
    assert gate.wide


def test_gate_asked_for_a_count_keeps_it_and_parked_lanes_end_at_close(pair):
    _, channel = pair
    fixed = lanes.Gate(channel, 3, adaptive=False)
    for _ in range(lanes.SETTLE * 2):
        fixed.record(False, 1.0, 0.001, 0.0)
    assert fixed.open == 3 and fixed.wait(2)

    gate = lanes.Gate(channel, 2, adaptive=True, threads=2)
    result: list[bool] = []
    parked = threading.Thread(target=lambda: result.append(gate.wait(1)))
    parked.start()
    time.sleep(0.1)
    assert parked.is_alive()  # lane 1 waits for the gate
    channel.closed = True
    gate.wake()
    parked.join(5)
    assert result == [False]


def test_plan():
    assert lanes.plan(3, False, None, 2) == 3  # asked for: as asked
    assert lanes.plan(lanes.AUTO, True, None, 2) == 2
    assert lanes.plan(lanes.AUTO, True, None, 16) == lanes.AUTO_MAX
    assert lanes.plan(lanes.AUTO, True, 0, 2) == 1  # GPU
    assert lanes.plan(lanes.AUTO, False, None, 2) == 1  # not declared thread-safe
    assert lanes.threads_each(2, 2) == 1 and lanes.threads_each(1, 4) == 1
    assert [lanes.threads_each(8, 3, i) for i in range(3)] == [3, 3, 2]  # none left idle
    assert [lanes.threads_each(5, 4, i) for i in range(4)] == [2, 1, 1, 1]


class SpyGate(lanes.Gate):
    def record(self, queued: bool, waited_s: float, batch_s: float, model_s: float) -> None:
        self.waits.append(waited_s)
        self.queues.append(queued)
        super().record(queued, waited_s, batch_s, model_s)


class ThreadsRunner:
    """A batch runner that answers with the torch threads its lane runs the batch on, after
    ``delay`` s (off the GIL, like a model call)."""

    def __init__(self, channel: Channel, delay: float = 0.0) -> None:
        self.streamer = Streamer(channel)
        self.context = SimpleNamespace(metrics=SimpleNamespace(drain=lambda: []))
        self.delay = delay

    def run_batch(self, reqs: list) -> list:
        time.sleep(self.delay)
        return [torch.get_num_threads()]


def test_a_lane_runs_on_its_share_of_threads_and_parked_time_is_not_waiting(pair):
    frontend, channel = pair
    gate = SpyGate(channel, 2, adaptive=True, threads=2)
    gate.waits, gate.queues = [], []
    # batches that take a while: a lane that is done at once could take batch 3 too before
    # the other lane, woken, gets to read it
    runners = [ThreadsRunner(channel, 0.05), ThreadsRunner(channel, 0.05)]
    lane1 = threading.Thread(target=lanes._lane, args=(channel, runners[1], gate, 1))
    lane1.start()
    send(frontend, infer(1))
    assert lanes.threads_each(2, 2, 0) == 1
    lane0 = threading.Thread(target=lanes._lane, args=(channel, runners[0], gate, 0))
    lane0.start()
    assert read_frame(frontend)["out"] == [2]  # lane 0 alone: both threads
    time.sleep(0.6)  # lane 1 parked, lane 0 waiting for work
    with gate._cond:  # what record does when the lanes pay
        gate.open = 2
        gate._cond.notify_all()
    time.sleep(0.2)  # lane 1 is reading now
    send(frontend, infer(2), infer(3))
    # lane 0 was already reading on both threads when the gate opened; lane 1 on its one
    assert sorted(read_frame(frontend)["out"][0] for _ in range(2)) == [1, 2]
    send(frontend, infer(4), infer(5))
    assert [read_frame(frontend)["out"][0] for _ in range(2)] == [1, 1]  # both lanes: one
    send(frontend, {"op": "stop"})
    lane0.join(5)
    lane1.join(5)
    assert not lane0.is_alive() and not lane1.is_alive()
    # lane 0 waited ~0.8 s for batch 2; lane 1, parked 0.6 s of its ~0.8 s, counts only the
    # 0.2 s it read
    waits = sorted(gate.waits)
    assert len(waits) == 5 and waits[-1] > 0.6 and waits[-2] < 0.5, waits
    # batch 1 was there before lane 0 asked; batches 2 and 3 came while both lanes waited
    assert gate.queues[:3] == [True, False, False], gate.queues


def test_a_worker_of_one_lane_moves_a_light_handler_to_one_thread(pair):
    """Through the lane loop: batches that take microseconds run on both threads until
    SETTLE of them were weighed, then on one."""
    frontend, channel = pair
    gate = lanes.Gate(channel, 1, adaptive=False, threads=2)
    lane = threading.Thread(target=lanes._lane, args=(channel, ThreadsRunner(channel), gate, 0))
    lane.start()
    send(frontend, *(infer(i) for i in range(lanes.SETTLE + 2)))
    seen = [read_frame(frontend)["out"][0] for _ in range(lanes.SETTLE + 2)]
    send(frontend, {"op": "stop"})
    lane.join(5)
    assert seen == [2] * lanes.SETTLE + [1, 1] and not lane.is_alive()


def test_model_clock_is_per_thread():
    model_clock.take()
    with model_clock.timing():
        time.sleep(0.02)
    other: list[float] = []
    thread = threading.Thread(target=lambda: other.append(model_clock.take()))
    thread.start()
    thread.join()
    assert other == [0.0]
    assert model_clock.take() >= 0.02
    assert model_clock.take() == 0.0


# -- which handlers run in lanes -----------------------------------------------------------------
def test_thread_safety_is_declared_by_the_served_class_not_inherited():
    class Subclass(TensorHandler):  # might hold a tokenizer: it has not said
        pass

    class Declared(TensorHandler):
        thread_safe = True

    assert declares_thread_safe(TensorHandler)
    assert not declares_thread_safe(Subclass)
    assert declares_thread_safe(Declared)

    class Compiled(TensorHandler):
        thread_safe = True

        def __init__(self):
            super().__init__()
            self.thread_safe = False  # what initialize does for a torch.compile'd model

    handler = Compiled()
    assert not Handler(handler.handle, handler).thread_safe
    assert not Handler(lambda data, ctx: data).thread_safe  # a function handler


def test_a_lane_copy_shares_the_model_not_the_per_batch_attributes():
    handler = TensorHandler()
    handler.model = object()
    handler.context = "lane 0"
    entry = Handler(handler.handle, handler).copy()
    copy = entry.__self__
    assert copy is not handler and copy.model is handler.model
    copy.context = "lane 1"
    assert handler.context == "lane 0"


# -- a real server ---------------------------------------------------------------------------------
PAIR_HANDLER = textwrap.dedent('''
    """TorchServe-style (declares nothing): with "meet", a batch waits at a barrier for a
    second one, so two only finish if they run at once; with "exit", it exits the process."""
    import os
    import sys
    import threading

    MEET = threading.Barrier(2, timeout=30)


    class PairHandler:
        def initialize(self, context):
            self.context = context

        def handle(self, data, context):
            self.context = context
            body = data[0].get("body") or {}
            if body.get("exit"):
                sys.exit(body["exit"])
            if body.get("meet"):
                MEET.wait()
            return [{"pid": os.getpid(), "thread": threading.current_thread().name,
                     "handler": id(self), "request_id": self.context.get_request_id(i)}
                    for i in range(len(data))]
''')

STREAM_HANDLER = textwrap.dedent('''
    """A generator per request (counted_chunks), and the thread that runs it."""
    import threading
    import time


    class LaneStreamer:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            name = threading.current_thread().name
            return [counted_chunks(row["body"], lambda i: {"seq": i, "t": time.time(),
                                                           "thread": name})
                    for row in data]
''') + COUNTED_CHUNKS


@pytest.fixture(scope="module")
def lane_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    src = tmp_path_factory.mktemp("lanes-src")
    store = tmp_path_factory.mktemp("lanes-store")
    one_at_a_time = {"batchSize": 1, "maxBatchDelay": 1}
    handler_archive(src, store, "pair", PAIR_HANDLER, {**one_at_a_time, "batchThreads": 2})
    handler_archive(src, store, "single", PAIR_HANDLER, one_at_a_time)
    handler_archive(src, store, "streams", STREAM_HANDLER, {**one_at_a_time, "batchThreads": 2})
    for name in ("digits", "resnet"):
        shutil.copy(model_store / f"{name}.mar", store)
    srv = Server(tmp_path_factory.mktemp("lanes-server"), store,
                 ["pair.mar", "single.mar", "streams.mar", "digits=digits.mar",
                  "resnet=resnet.mar"],
                 # two torch threads per worker however many models, and digits in two lanes
                 # (auto would keep it in one: its model call is too short to pay)
                 extra_config={"threads_per_worker": 2,
                               "models": {"digits": {"1.0": {"batchThreads": 2}}}})
    srv.start(timeout=240)
    yield srv
    survivors = srv.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


def lanes_of(server: Server, model: str) -> list[int]:
    described = httpx.get(f"{server.management}/models/{model}").json()[0]
    return [w["batchThreads"] for w in described["workers"] if w["status"] == "READY"]


def test_two_batches_run_at_once_in_one_worker(lane_server):
    assert lanes_of(lane_server, "pair") == [2]
    url = f"{lane_server.inference}/predictions/pair"
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: httpx.post(url, json={"meet": True}, timeout=60),
                                range(2)))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    bodies = [r.json() for r in answers]
    assert bodies[0]["pid"] == bodies[1]["pid"]  # one worker process
    assert bodies[0]["thread"] != bodies[1]["thread"]
    assert bodies[0]["handler"] != bodies[1]["handler"]  # each lane its own copy
    for r, body in zip(answers, bodies):  # each lane its own context: its own request ids
        assert body["request_id"] == r.headers["x-request-id"]


def test_a_torchserve_handler_runs_one_batch_at_a_time_unless_asked(lane_server):
    assert lanes_of(lane_server, "single") == [1]
    r = httpx.post(f"{lane_server.inference}/predictions/single", json={}, timeout=30)
    assert r.status_code == 200 and r.json()["thread"] == "MainThread"


def test_answers_stay_with_their_requests_across_lanes(lane_server, direct_models):
    assert lanes_of(lane_server, "digits") == [2]
    _, _, x_test, _ = load_split()
    x = x_test[:96]
    expected = direct_models["digits"](x)
    probs = np.exp(expected - expected.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    url = f"{lane_server.inference}/predictions/digits"

    def ask(i: int) -> dict:
        r = httpx.post(url, json=x[i].ravel().tolist(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(len(x))))
    for i, answer in enumerate(answers):
        assert answer["class"] == int(expected[i].argmax())
        assert answer["probability"] == pytest.approx(float(probs[i].max()), abs=1e-4)


def stream(server: Server, body: dict, stop_after: int | None = None) -> list[dict]:
    got = []
    with httpx.stream("POST", f"{server.inference}/predictions/streams", json=body,
                      timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                got.append(json.loads(line))
            if stop_after is not None and len(got) == stop_after:
                break  # leaving the block closes the connection mid-stream
    return got


def test_streams_in_two_lanes_and_a_cancel_reaches_its_own(lane_server, tmp_path):
    files = [tmp_path / "quitter", tmp_path / "stayer"]
    with ThreadPoolExecutor(2) as pool:
        quitter = pool.submit(stream, lane_server, {"n": 200, "delay": 0.02,
                                                    "count_file": str(files[0])}, 10)
        stayer = pool.submit(stream, lane_server, {"n": 40, "delay": 0.02,
                                                   "count_file": str(files[1])})
        left, kept = quitter.result(), stayer.result()
    assert left[0]["thread"] != kept[0]["thread"]  # the two ran in different lanes
    assert kept[0]["t"] < left[-1]["t"]  # at the same time
    assert [c["seq"] for c in kept] == list(range(40))
    assert wait_for(lambda: files[1].read_text() == "40 closed")
    state = wait_for(lambda: "closed" in files[0].read_text() and files[0].read_text())
    assert int(state.split()[0]) < 150, state  # closed when its client left, not run out


def test_a_lane_that_exits_ends_the_worker_and_another_starts(lane_server):
    url = f"{lane_server.inference}/predictions/pair"
    before = httpx.get(f"{lane_server.management}/models/pair").json()[0]["workers"][0]["pid"]
    r = httpx.post(url, json={"exit": 3}, timeout=30)
    assert r.status_code == 503, r.text
    assert "exit code 3" in r.json()["message"]
    described = wait_for(lambda: (d := httpx.get(
        f"{lane_server.management}/models/pair").json()[0])["workers"] and all(
        w["status"] == "READY" and w["pid"] != before for w in d["workers"]) and d,
        timeout=60)
    assert "exit code 3" in described["lastWorkerDeath"]
    r = httpx.post(url, json={}, timeout=30)
    assert r.status_code == 200 and r.json()["pid"] != before


def test_auto_opens_the_second_lane_for_resnet_under_load(lane_server):
    """resnet through the built-in handler: auto starts with one lane and opens the other
    once batches wait for it and the model takes most of their time."""
    assert lanes_of(lane_server, "resnet") == [1]
    url = f"{lane_server.inference}/predictions/resnet"
    body = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32).tolist()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                assert client.post(url, json=body).status_code == 200

    with ThreadPoolExecutor(8) as pool:
        loads = [pool.submit(load) for _ in range(8)]
        try:
            wait_for(lambda: lanes_of(lane_server, "resnet") == [2], timeout=120)
        finally:
            stop.set()
        for f in loads:
            f.result()
