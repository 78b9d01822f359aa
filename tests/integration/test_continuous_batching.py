"""Continuous batching (model-config.yaml's ``continuousBatching: true``), with a handler
written as TorchServe's continuous-batching handlers are (test/pytest/test_data/streaming/
stream_handler.py): state per request id in ``context.cache``, one token per step, and
``context.stopping_criteria`` saying when a request is done. Each answer is a chunked stream
of its tokens; requests join a running batch between steps."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CONTINUOUS_HANDLER, Server, handler_archive, wait_for

CONFIG = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 2, "maxBatchDelay": 1,
          "continuousBatching": True, "responseTimeout": 30}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    src = tmp_path_factory.mktemp("continuous-src")
    store = tmp_path_factory.mktemp("continuous-store")
    handler_archive(src, store, "generator", CONTINUOUS_HANDLER, CONFIG)
    server = Server(tmp_path_factory.mktemp("continuous-server"), Path(store),
                    ["generator.mar"])
    server.start()
    yield server
    assert not server.stop()


class Generation(threading.Thread):
    """One streamed request, read chunk by chunk (each chunk one JSON line)."""

    def __init__(self, srv: Server, prompt: str, tokens: int, leave_after: int = 0) -> None:
        super().__init__(daemon=True)
        self.srv, self.prompt, self.tokens, self.leave_after = srv, prompt, tokens, leave_after
        self.lines: list[dict] = []
        self.status = 0
        self.headers: httpx.Headers | None = None
        self.start()

    def run(self) -> None:
        body = {"prompt": self.prompt, "max_new_tokens": self.tokens}
        with httpx.stream("POST", f"{self.srv.inference}/predictions/generator", json=body,
                          timeout=30) as r:
            self.status, self.headers = r.status_code, r.headers
            for line in r.iter_lines():
                if line:
                    self.lines.append(json.loads(line))
                if self.leave_after and len(self.lines) >= self.leave_after:
                    return  # the client goes away mid-stream

    @property
    def text(self) -> str:
        return self.prompt + "".join(line["token"] for line in self.lines)


def test_each_step_streams_a_chunk_and_a_request_joins_the_running_batch(srv: Server):
    a = Generation(srv, "a", 20)  # a second of steps
    wait_for(lambda: len(a.lines) >= 2, timeout=30)  # a's batch is running
    b = Generation(srv, "k", 2)
    a.join(30)
    b.join(30)
    assert (a.status, b.status) == (200, 200)
    assert a.headers is not None and a.headers.get("transfer-encoding") == "chunked"
    assert a.text == "abcdefghijklmnopqrstu" and b.text == "klm"
    # b stepped in a's batch, and a went on alone once b was done
    assert [line["batch"] for line in b.lines] == [["a", "k"], ["a", "k"]]
    assert a.lines[0]["batch"] == ["a"] and a.lines[-1]["batch"] == ["a"]
    assert sum(line["batch"] == ["a", "k"] for line in a.lines) == 2


def test_the_batch_holds_batch_size_requests_and_the_next_waits_for_room(srv: Server):
    runs = [Generation(srv, prompt, 4) for prompt in ("a", "f", "p")]
    for run in runs:
        run.join(30)
    assert sorted(run.text for run in runs) == ["abcde", "fghij", "pqrst"]
    assert all(len(line["batch"]) <= 2 for run in runs for line in run.lines)
    # the third started once one of the first two was done, and ran beside the other's end
    # or alone: never three at once
    assert any(len(line["batch"]) == 1 for run in runs for line in run.lines)


def test_a_one_step_answer_is_a_whole_answer(srv: Server):
    r = httpx.post(f"{srv.inference}/predictions/generator",
                   json={"prompt": "x", "max_new_tokens": 1}, timeout=30)
    assert r.status_code == 200
    assert json.loads(r.text) == {"token": "y", "batch": ["x"]}
    assert "chunked" not in r.headers.get("transfer-encoding", "")


def test_a_client_that_leaves_is_dropped_from_the_next_steps(srv: Server):
    gone = Generation(srv, "A", 40, leave_after=1)
    gone.join(30)
    time.sleep(0.3)  # its next chunks find the connection closed
    late = Generation(srv, "a", 6)
    late.join(30)
    assert late.text == "abcdefg"
    # "A" would run 40 steps of 50 ms (2 s) if it were still stepped
    assert late.lines[-1]["batch"] == ["a"]


def test_describe_says_continuous_batching(srv: Server):
    [desc] = httpx.get(f"{srv.management}/models/generator", timeout=30).json()
    assert desc["continuousBatching"] is True
    assert desc["batchSize"] == 2
