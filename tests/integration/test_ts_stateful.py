"""Stateful models: sequence batching over HTTP under `--ts-config`, as TorchServe's
test/pytest/test_example_stateful_sequence_batching_http.py drives it (two workers, each
sequence's state in one of them), plus the sequence id TorchServe makes up, its limits and a
handler ending a sequence (SequenceBatching.java, Model.addJobInGroup, ApiUtils)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import STATEFUL_HANDLER, Server, handler_archive

# the TorchServe test's model-config.yaml
STATEFUL = {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4, "maxNumSequence": 4,
            "sequenceMaxIdleMSec": 5000, "maxSequenceJobQueueSize": 10,
            "sequenceBatching": True}
# room for one sequence only
SINGLE = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxNumSequence": 1,
          "sequenceMaxIdleMSec": 60000, "sequenceBatching": True}
# sequences that close after 200 ms without a request
BRIEF = {"batchSize": 2, "sequenceMaxIdleMSec": 200, "sequenceBatching": True}
REFUSED = ('Model "single" has no worker to serve inference request. Please use scale '
           "workers API to add workers. If this is a sequence inference, please check if it "
           "is closed, or expired; or exceeds maxSequenceJobQueueSize")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    src = tmp_path_factory.mktemp("stateful-src")
    store = tmp_path_factory.mktemp("stateful-store")
    handler_archive(src, store, "stateful", STATEFUL_HANDLER, STATEFUL)
    handler_archive(src, store, "single", STATEFUL_HANDLER, SINGLE)
    handler_archive(src, store, "brief", STATEFUL_HANDLER, BRIEF)
    root = tmp_path_factory.mktemp("stateful-server")
    props = root / "config.properties"
    props.write_text("disable_token_authorization=true\n")
    server = Server(root, Path(store), ["stateful.mar", "single.mar", "brief.mar"],
                    extra_args=["--ts-config", str(props)])
    server.start()
    yield server
    assert not server.stop()


def post(srv: Server, model: str, number: int, sequence: str | None = None) -> httpx.Response:
    headers = {"ts_request_sequence_id": sequence} if sequence else {}
    return httpx.post(f"{srv.inference}/predictions/{model}", content=str(number).encode(),
                      headers=headers, timeout=30)


def test_each_sequence_keeps_its_state_in_one_worker(srv: Server):
    """The TorchServe test: seq_0 sends 1 3 5 7 9 and seq_1 2 4 6 8 10 at the same time;
    each answer is its sequence's running sum, so every request of a sequence reached the
    worker holding its sum (the two workers' sums are their own)."""
    def client(sequence: str, numbers: list[int]) -> list[httpx.Response]:
        return [post(srv, "stateful", n, sequence) for n in numbers]

    with ThreadPoolExecutor(2) as pool:
        seq_0 = pool.submit(client, "seq_0", [1, 3, 5, 7, 9])
        seq_1 = pool.submit(client, "seq_1", [2, 4, 6, 8, 10])
    out = {"seq_0": seq_0.result(), "seq_1": seq_1.result()}
    assert " ".join(r.text for r in out["seq_0"]) == "1 4 9 16 25"
    assert " ".join(r.text for r in out["seq_1"]) == "2 6 12 20 30"
    for sequence, answers in out.items():
        assert {r.headers["x-worker-pid"] for r in answers} == {
            answers[0].headers["x-worker-pid"]}, sequence
        assert all(r.headers["ts_request_sequence_id"] == sequence for r in answers)


def test_a_request_without_an_id_starts_a_sequence_named_for_it(srv: Server):
    """InferenceRequestHandler.predict: no id, so ``ts-seq-<uuid>`` and the start header
    (which this handler resets its sum on); the answer carries the id to go on with."""
    first = post(srv, "stateful", 5)
    assert (first.status_code, first.text) == (200, "5")
    sequence = first.headers["ts_request_sequence_id"]
    assert sequence.startswith("ts-seq-")
    second = post(srv, "stateful", 2, sequence)
    assert (second.status_code, second.text) == (200, "7")
    assert second.headers["x-worker-pid"] == first.headers["x-worker-pid"]
    assert post(srv, "stateful", 1).text == "1"  # another new sequence


def test_describe_shows_the_sequence_settings(srv: Server):
    """ApiUtils.createModelResponse: maxNumSequence is at least batchSize x maxWorkers."""
    (desc,) = httpx.get(f"{srv.management}/models/stateful").json()
    assert {k: desc[k] for k in ("stateful", "sequenceMaxIdleMSec", "sequenceTimeoutMSec",
                                 "maxNumSequence", "maxSequenceJobQueueSize")} == {
        "stateful": True, "sequenceMaxIdleMSec": 5000, "sequenceTimeoutMSec": 0,
        "maxNumSequence": 8, "maxSequenceJobQueueSize": 10}
    assert len(desc["workers"]) == 2


def test_a_full_model_refuses_new_sequences_until_the_handler_ends_one(srv: Server):
    """Model.addJobInGroup: past maxNumSequence, 503 with TorchServe's message; the
    handler's ``ts_request_sequence_end`` answer header closes its sequence
    (SequenceContinuousBatching.setJobGroupFinished), which frees the place."""
    assert post(srv, "single", 3, "a").text == "3"
    refused = post(srv, "single", 1, "b")
    assert refused.status_code == 503
    assert refused.json() == {"code": 503, "type": "ServiceUnavailableException",
                              "message": REFUSED}
    assert post(srv, "single", 4, "a").text == "7"  # the open sequence goes on
    end = post(srv, "single", 0, "a")
    assert (end.status_code, end.text) == (200, "end")
    assert end.headers["ts_request_sequence_end"] == "a"
    assert post(srv, "single", 1, "b").text == "1"


def test_a_closed_sequence_is_not_opened_again(srv: Server):
    """TorchServe's rule (its stateful example's README, and the message): a request of a
    sequence closed for idleness, or ended by the handler, is not processed: 503 (TorchServe's
    test_example_stateful_sequence_continuous_batching_http.py idle and session timeouts)."""
    assert post(srv, "brief", 2, "idle").text == "2"
    time.sleep(0.3)  # past sequenceMaxIdleMSec
    late = post(srv, "brief", 1, "idle")
    assert late.status_code == 503
    assert "please check if it is closed, or expired" in late.json()["message"]
    assert post(srv, "brief", 0, "ended").text == "end"
    assert post(srv, "brief", 1, "ended").status_code == 503


def test_config_properties_renames_the_sequence_headers(tmp_path: Path):
    """ts_header_key_sequence_id / _start / _end (ConfigManager): the frontend reads and
    writes the configured names, and the handler's context.header_key_sequence_* (TorchServe's
    ts/context.py, from the TS_REQUEST_SEQUENCE_* variables) name the same headers."""
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    store.mkdir()
    handler_archive(src, store, "stateful", STATEFUL_HANDLER, SINGLE)
    props = tmp_path / "config.properties"
    props.write_text("disable_token_authorization=true\n"
                     "ts_header_key_sequence_id=X-Session\n"
                     "ts_header_key_sequence_start=x-session-start\n"
                     "ts_header_key_sequence_end=x-session-end\n")
    server = Server(tmp_path, store, ["stateful.mar"], extra_args=["--ts-config", str(props)])
    server.start()
    try:
        def send(number: int, headers: dict[str, str]) -> httpx.Response:
            return httpx.post(f"{server.inference}/predictions/stateful",
                              content=str(number).encode(), headers=headers, timeout=30)

        first = send(5, {})  # a new sequence: the handler saw x-session-start and reset
        assert (first.status_code, first.text) == (200, "5")
        session = first.headers["x-session"]
        assert session.startswith("ts-seq-") and "ts_request_sequence_id" not in first.headers
        assert send(3, {"X-Session": session}).text == "8"
        end = send(0, {"x-session": session})  # the handler ends it by the configured name
        assert (end.text, end.headers["x-session-end"]) == ("end", session)
        assert send(1, {"x-session": session}).status_code == 503  # closed
        # the default name is an ordinary header now: this opens a sequence of its own
        other = send(2, {"ts_request_sequence_id": session})
        assert (other.status_code, other.text) == (200, "2")
        assert other.headers["x-session"] != session
    finally:
        assert not server.stop()
