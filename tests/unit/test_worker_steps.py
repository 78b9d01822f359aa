"""A continuous batch's step in the worker (modelserve/worker/batch.py): a request without
data reaches the handler as ``{}``, ``context.stopping_criteria`` sets ``ts_stream_next``, and
a handler error fails the step whole instead of running its requests again one by one."""

from __future__ import annotations

from typing import Any

from modelserve.worker.batch import BatchRunner
from modelserve.worker.context import Context
from modelserve.worker.streaming import Streamer


class Stepper:
    """Counts the steps each request took; ``boom`` in the batch makes the handler raise."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.steps: dict[str, int] = {}

    def handle(self, data: list[Any], context: Context) -> list[str]:
        self.calls.append(data)
        ids = list(context.request_ids.values())
        if any(isinstance(row.get("body"), str) and row["body"] == "boom" for row in data):
            raise ValueError("boom")
        for rid in ids:
            self.steps[rid] = self.steps.get(rid, 0) + 1
        context.stopping_criteria = [lambda out, rid=rid: self.steps[rid] >= 3 for rid in ids]
        return [f"{rid}:{self.steps[rid]}" for rid in ids]


def runner(handler: Stepper) -> BatchRunner:
    ctx = Context("m", "/tmp", {}, 8, None)
    return BatchRunner(handler.handle, ctx, Streamer(None))  # type: ignore[arg-type]


def request(rid: str, body: bytes | None) -> list[Any]:
    return [rid, "text/plain", body, {}]


def test_a_running_request_comes_without_data_and_the_criteria_say_when_it_ends():
    handler = Stepper()
    run = runner(handler)
    first = run.run_batch([request("a", b"go")])
    assert first[0][2] == b"a:1" and first[0][3]["ts_stream_next"] == "true"
    second = run.run_batch([request("a", None), request("b", b"go")])
    assert handler.calls[-1] == [{}, {"body": "go"}]
    assert [out[3]["ts_stream_next"] for out in second] == ["true", "true"]
    third = run.run_batch([request("a", None), request("b", None)])
    assert [(out[2], out[3]["ts_stream_next"]) for out in third] == [
        (b"a:3", "false"), (b"b:2", "true")]


def test_a_failing_step_fails_whole_and_runs_once():
    handler = Stepper()
    run = runner(handler)
    run.run_batch([request("a", b"go")])
    out = run.run_batch([request("a", None), request("x", b"boom")])
    assert [item[0] for item in out] == [500, 500]
    assert len(handler.calls) == 2  # not run again request by request
    assert handler.steps == {"a": 1}  # a's state did not step twice
