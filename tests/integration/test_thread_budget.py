"""How many torch threads a worker gets, and which TorchServe handlers get batch lanes (issue
19). Threads: the cores shared among its own model's workers, not among every worker of the
server (with two models of one worker each, each worker had half the cores where TorchServe
gives each all of them); real workers report them in their load line. Lanes: a BaseHandler
subclass written the TorchServe way (no initialize of its own) runs in the adaptive lanes, and
its own ``inference`` is timed as its model call."""

from __future__ import annotations

import os
import re
import textwrap
from types import SimpleNamespace

import httpx
import torch

from modelserve import model_clock
from modelserve.handlers.base_handler import BaseHandler
from modelserve.worker.loader import Handler, keeps_parents_state, runs_in_lanes
from tests.conftest import Server, handler_archive, wait_for

# A TorchServe-style class that declares nothing: one batch lane, on all its threads
HANDLER = textwrap.dedent('''
    import torch

    class Threads:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            return [torch.get_num_threads() for _ in data]
''')
CORES = len(os.sched_getaffinity(0))


def threads_logged(srv: Server, model: str, count: int) -> list[int]:
    pattern = re.compile(rf"\[{model}:\d+\] INFO loaded in \d+ ms on cpu; 1 batch lane\(s\) "
                         r"of (\d+) torch thread\(s\)")
    return wait_for(lambda: (found := pattern.findall(srv.log())) and len(found) >= count
                    and [int(n) for n in found])


def test_each_models_workers_share_the_cores_among_themselves(tmp_path):
    store, src = tmp_path / "store", tmp_path / "src"
    store.mkdir()
    src.mkdir()
    handler_archive(src, store, "one", HANDLER, {"minWorkers": 1, "maxWorkers": 1})
    handler_archive(src, store, "two", HANDLER, {"minWorkers": 2, "maxWorkers": 2})
    srv = Server(tmp_path, store, ["one.mar", "two.mar"]).start()
    try:
        assert threads_logged(srv, "one", 1) == [CORES]  # alone in its model: every core
        assert threads_logged(srv, "two", 2) == [max(1, CORES // 2)] * 2
        answer = httpx.post(f"{srv.inference}/predictions/one", json=[1]).json()
        assert answer == CORES  # what the handler's thread runs on
    finally:
        assert not srv.stop()


# -- which TorchServe handlers run in lanes --------------------------------------------------------
class TorchServeWay(BaseHandler):  # preprocess / inference / postprocess only
    def preprocess(self, data):
        self.rows = len(data)  # per batch: each lane copy's own attribute
        return torch.ones(len(data), 2)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        return data.tolist()


class OwnState(TorchServeWay):
    def initialize(self, context):
        super().initialize(context)
        self.tokenizer = object()  # shared by every copy: it must say thread_safe itself


class Declared(OwnState):
    thread_safe = True


class Refused(TorchServeWay):
    thread_safe = False


def test_a_subclass_without_state_of_its_own_runs_in_lanes():
    assert keeps_parents_state(TorchServeWay) and runs_in_lanes(TorchServeWay)
    assert not runs_in_lanes(OwnState)
    assert runs_in_lanes(Declared) and not runs_in_lanes(Refused)
    assert not runs_in_lanes(type("Plain", (), {"handle": lambda self, d, c: d}))
    assert not runs_in_lanes(type("Init", (TorchServeWay,), {"__init__": lambda self: None}))
    handler = TorchServeWay()
    assert Handler(handler.handle, handler).thread_safe
    handler.thread_safe = False  # what initialize does for a torch.compile'd model
    assert not Handler(handler.handle, handler).thread_safe


def test_a_handlers_own_inference_is_timed_as_its_model_call(monkeypatch):
    ticks = iter(range(1000))  # model_clock's clock: one second per reading
    monkeypatch.setattr(model_clock, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    handler = TorchServeWay()
    handler.model = Double()
    handler.context = SimpleNamespace(metrics=SimpleNamespace(add_time=lambda *args: None))
    model_clock.take()
    assert handler._run_pipeline([{"body": 1}]) == [[2.0, 2.0]]
    assert model_clock.take() == 1  # its own inference: timed around it
    base = BaseHandler()  # inference through run_model: timed there, not again around it
    base.model = Double()
    with model_clock.timing_unless_timed():
        base.inference(torch.ones(1, 2))
    assert model_clock.take() == 1
