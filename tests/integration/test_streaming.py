"""Streamed answers over real HTTP, from real worker processes (README, "Streaming responses").

Handlers written here into archives: a generator per request (``gen``), TorchServe's
``send_intermediate_predict_response`` in its unmodified form (``ts_stream``), one async
generator for the batch yielding a list per step (``steps``), a tight ``response_timeout``
(``slow``), and the README's example handler (``words``).
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelserve.server.transport.http.streaming import sse_event
from tests.conftest import COUNTED_CHUNKS, Server, handler_archive, wait_for, wait_logged

GEN_HANDLER = textwrap.dedent('''
    """A generator per request; body: n, delay, tag, fail_at, count_file, plain, sleep, boom."""
    import os
    import time


    class GenStreamer:
        def initialize(self, context):
            self.context = context

        def stream(self, body, batch):
            return counted_chunks(body, lambda i: {"seq": i, "t": time.time(),
                                                   "tag": body.get("tag"), "pid": os.getpid(),
                                                   "batch": batch})

        def handle(self, data, context):
            logs = {row["body"]["batch_log"] for row in data
                    if isinstance(row.get("body"), dict) and "batch_log" in row["body"]}
            for path in logs:  # which batch sizes handle was called with
                with open(path, "a") as f:
                    f.write(f"{len(data)}\\n")
            out = []
            for row in data:
                body = row.get("data", row.get("body"))
                if body.get("boom"):
                    raise RuntimeError("kaboom")
                if body.get("sleep"):
                    time.sleep(body["sleep"])
                if body.get("plain") or body.get("sleep"):
                    out.append({"plain": True, "pid": os.getpid(), "batch": len(data)})
                else:
                    out.append(self.stream(body, len(data)))
            return out
''') + COUNTED_CHUNKS

# TorchServe's streaming handler form, unmodified: ts.* imports, a batch-sized list per
# send_intermediate_predict_response call, and the returned list as the last chunk.
TS_HANDLER = textwrap.dedent('''
    import time

    from ts.protocol.otf_message_handler import send_intermediate_predict_response
    from ts.torch_handler.base_handler import BaseHandler


    class StreamingHandler(BaseHandler):
        def initialize(self, ctx):
            self.initialized = True

        def handle(self, data, context):
            texts = [row.get("data") or row.get("body") for row in data]
            if isinstance(texts[0], (bytes, bytearray)):
                texts = [t.decode() for t in texts]
            for i in range(3):
                if i:
                    time.sleep(0.4)
                send_intermediate_predict_response(
                    [f"{t} {i} {len(data)} {time.time():.6f}\\n" for t in texts],
                    context.request_ids, "Intermediate Prediction success", 200, context)
            return [f"{t} done {len(data)} {time.time():.6f}\\n" for t in texts]
''')

STEPS_HANDLER = textwrap.dedent('''
    """One async generator for the whole batch: each step yields a list, one chunk per request."""
    import asyncio
    import time


    async def handle(data, context):
        if data is None:
            return
        bodies = [row.get("data", row.get("body")) for row in data]
        for i in range(max(b["n"] for b in bodies)):
            if i:
                await asyncio.sleep(bodies[0].get("delay", 0.0))
            yield [{"tag": b["tag"], "seq": i, "t": time.time(), "batch": len(data)}
                   if i < b["n"] else None for b in bodies]
''')

DOCS_EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / \
    "streaming_handler.py"


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    src = tmp_path_factory.mktemp("stream-src")
    store = tmp_path_factory.mktemp("stream-store")
    # while the worker is busy, a batch waits up to 1 s to fill (tests that need a batch keep
    # it busy first); an idle worker takes a request at once
    batched = {"batchSize": 3, "maxBatchDelay": 1000}
    handler_archive(src, store, "gen", GEN_HANDLER, batched)
    handler_archive(src, store, "ts_stream", TS_HANDLER, batched)
    handler_archive(src, store, "steps", STEPS_HANDLER, batched)
    handler_archive(src, store, "slow", GEN_HANDLER, {"responseTimeout": 2})
    handler_archive(src, store, "words", None, {"handler": {"delay": 0.05}}, DOCS_EXAMPLE)
    srv = Server(tmp_path_factory.mktemp("stream-server"), store,
                 ["gen.mar", "ts_stream.mar", "steps.mar", "slow.mar", "words.mar"])
    srv.start()
    yield srv
    survivors = srv.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


def url(server: Server, model: str) -> str:
    return f"{server.inference}/predictions/{model}"


def stream_lines(server: Server, model: str, body: dict | str,
                 headers: dict | None = None) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """POST and read the answer line by line: (response, [(arrival time, line), ...])."""
    kwargs = {"json": body} if isinstance(body, dict) else {
        "content": body, "headers": {"Content-Type": "text/plain"}}
    if headers:
        kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
    lines = []
    with httpx.stream("POST", url(server, model), timeout=30, **kwargs) as r:
        for line in r.iter_lines():
            if line:
                lines.append((time.time(), line))
    return r, lines


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) for each Server-Sent Event in ``text``."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        events.append((name, "\n".join(data)))
    return events


def metric(server: Server, name: str, model: str) -> float:
    text = httpx.get(f"{server.metrics}/metrics").text
    pattern = rf'^{name}\{{[^}}]*model_name="{model}"[^}}]*\}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


# -- chunked HTTP --------------------------------------------------------------------------
def test_chunks_arrive_as_they_are_produced(stream_server):
    start = time.time()
    r, lines = stream_lines(stream_server, "gen", {"n": 4, "delay": 0.5, "tag": "a"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers
    assert r.headers["x-request-id"]
    chunks = [json.loads(line) for _, line in lines]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]
    assert all(c["t"] >= start for c in chunks)
    first_arrival = lines[0][0]
    # the first chunk was read 1.5 s before the handler even produced the last one
    assert first_arrival < chunks[-1]["t"] - 1.0, (first_arrival, chunks[-1]["t"])


def test_sse_framing(stream_server):
    with httpx.stream("POST", url(stream_server, "gen"), json={"n": 3, "delay": 0.3},
                      headers={"Accept": "text/event-stream"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        raw = []
        for piece in r.iter_text():
            raw.append((time.time(), piece))
    text = "".join(piece for _, piece in raw)
    assert re.fullmatch(r"(data: \{[^\n]*\}\n\n){3}", text), text
    events = sse_events(text)
    assert [json.loads(data)["seq"] for _, data in events] == [0, 1, 2]
    assert raw[0][0] < json.loads(events[-1][1])["t"] - 0.3  # the first event came early


def test_sse_event_framing_of_lines():
    assert sse_event(b"one") == b"data: one\n\n"
    assert sse_event(b"a\nb\r\nc") == b"data: a\ndata: b\ndata: c\n\n"
    assert sse_event(b"{}", b"error") == b"event: error\ndata: {}\n\n"


def test_readme_example_streams_words(stream_server):
    r, lines = stream_lines(stream_server, "words", "streams arrive word by word")
    assert r.status_code == 200
    words = [json.loads(line) for _, line in lines]
    assert [w["word"] for w in words] == "streams arrive word by word".split()
    assert {w["request_id"] for w in words} == {r.headers["x-request-id"]}
    r = httpx.post(url(stream_server, "words"), content="hi there", timeout=30,
                   headers={"Content-Type": "text/plain", "Accept": "text/event-stream"})
    assert [json.loads(d)["word"] for _, d in sse_events(r.text)] == ["hi", "there"]


# -- TorchServe's send_intermediate_predict_response -----------------------------------------
def test_torchserve_intermediate_responses(stream_server):
    r, lines = stream_lines(stream_server, "ts_stream", "hello")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    words = [line.split() for _, line in lines]
    assert [w[:2] for w in words] == [["hello", "0"], ["hello", "1"], ["hello", "2"],
                                      ["hello", "done"]]
    last_produced = float(words[-1][3])
    assert lines[0][0] < last_produced - 0.5  # chunk 0 arrived before the last was made


def run_concurrently(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_torchserve_intermediate_responses_in_a_batch(stream_server):
    """A batch-sized list per call: each request gets its own entries."""
    tags = ["red", "green", "blue"]
    results = run_concurrently([
        lambda t=t: stream_lines(stream_server, "ts_stream", t) for t in tags])
    batch_sizes = set()
    for tag, (r, lines) in zip(tags, results):
        assert r.status_code == 200
        words = [line.split() for _, line in lines]
        assert [w[0] for w in words] == [tag] * 4
        assert [w[1] for w in words] == ["0", "1", "2", "done"]
        batch_sizes.update(int(w[2]) for w in words)
    assert max(batch_sizes) > 1, "the requests were never batched together"


# -- generators per request, async generator for a batch --------------------------------------
def test_batch_of_streams_each_gets_its_own_chunks(stream_server):
    blocker = threading.Thread(target=httpx.post, args=(url(stream_server, "gen"),),
                               kwargs={"json": {"sleep": 1.5}, "timeout": 30})
    blocker.start()  # keeps the worker busy, so the next three requests form one batch
    time.sleep(0.1)
    tags = ["a", "b", "c"]
    results = run_concurrently([
        lambda t=t, n=n: stream_lines(stream_server, "gen", {"n": n, "delay": 0.1, "tag": t})
        for n, t in zip((3, 5, 4), tags)])
    blocker.join()
    batch_sizes = set()
    for n, tag, (r, lines) in zip((3, 5, 4), tags, results):
        assert r.status_code == 200
        chunks = [json.loads(line) for _, line in lines]
        assert [c["tag"] for c in chunks] == [tag] * n
        assert [c["seq"] for c in chunks] == list(range(n))
        batch_sizes.update(c["batch"] for c in chunks)
    assert batch_sizes == {3}, batch_sizes


def test_a_failing_batch_is_retried_alone_and_its_streams_still_stream(stream_server,
                                                                       tmp_path):
    """handle raises for the batch (one bad request): each request is run alone, and the
    good one's generator streams as usual."""
    batch_log = tmp_path / "batches"
    blocker = threading.Thread(target=httpx.post, args=(url(stream_server, "gen"),),
                               kwargs={"json": {"sleep": 1.5}, "timeout": 30})
    blocker.start()
    time.sleep(0.1)
    good, bad = run_concurrently([
        lambda: stream_lines(stream_server, "gen",
                             {"n": 3, "tag": "good", "batch_log": str(batch_log)}),
        lambda: httpx.post(url(stream_server, "gen"), timeout=30,
                           json={"boom": True, "batch_log": str(batch_log)})])
    blocker.join()
    assert batch_log.read_text().split() == ["2", "1", "1"]  # the batch, then each alone
    assert bad.status_code == 500 and "kaboom" in bad.json()["message"]
    r, lines = good
    assert r.status_code == 200
    assert [(c["tag"], c["seq"], c["batch"]) for c in map(json.loads, (x for _, x in lines))] \
        == [("good", 0, 1), ("good", 1, 1), ("good", 2, 1)]


def test_async_generator_yielding_a_list_per_step(stream_server):
    r, lines = stream_lines(stream_server, "steps", {"n": 3, "delay": 0.4, "tag": "x"})
    assert r.status_code == 200
    chunks = [json.loads(line) for _, line in lines]
    assert [(c["tag"], c["seq"]) for c in chunks] == [("x", 0), ("x", 1), ("x", 2)]
    assert lines[0][0] < chunks[-1]["t"] - 0.5

    blocker = threading.Thread(target=stream_lines, args=(stream_server, "steps"),
                               kwargs={"body": {"n": 3, "delay": 0.75, "tag": "z"}})
    blocker.start()
    time.sleep(0.1)
    tags = {"p": 2, "q": 4, "r": 3}
    results = run_concurrently([
        lambda t=t, n=n: stream_lines(stream_server, "steps", {"n": n, "delay": 0.1, "tag": t})
        for t, n in tags.items()])
    blocker.join()
    for (tag, n), (r, lines) in zip(tags.items(), results):
        assert r.status_code == 200
        chunks = [json.loads(line) for _, line in lines]
        assert [(c["tag"], c["seq"]) for c in chunks] == [(tag, i) for i in range(n)]
        assert chunks[0]["batch"] == 3


# -- cancellation ------------------------------------------------------------------------------
def read_count(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_client_disconnect_stops_the_generator(stream_server, tmp_path):
    count_file = tmp_path / "count"
    body = {"n": 200, "delay": 0.05, "count_file": str(count_file)}
    got = []
    with httpx.stream("POST", url(stream_server, "gen"), json=body, timeout=30) as r:
        for line in r.iter_lines():
            got.append(json.loads(line))
            if len(got) == 3:
                break  # leaving the block closes the connection mid-stream
    pid = got[0]["pid"]
    deadline = time.monotonic() + 10
    while "closed" not in read_count(count_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    state = read_count(count_file)
    assert state.endswith("closed"), f"the generator was not closed: {state!r}"
    produced = int(state.split()[0])
    assert 3 <= produced < 60, produced
    time.sleep(0.5)
    assert read_count(count_file) == state  # nothing produced after the close

    # the same worker then serves normally, plain and streamed
    r = httpx.post(url(stream_server, "gen"), json={"plain": True}, timeout=30)
    assert r.status_code == 200 and r.json()["pid"] == pid
    r, lines = stream_lines(stream_server, "gen", {"n": 3})
    assert [json.loads(line)["pid"] for _, line in lines] == [pid] * 3


def test_client_disconnect_in_a_batch_stops_only_its_stream(stream_server, tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    done = threading.Event()

    def quitter() -> None:
        body = {"n": 200, "delay": 0.02, "count_file": str(files[0])}
        with httpx.stream("POST", url(stream_server, "gen"), json=body, timeout=30) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n == 2:
                    break
        done.set()

    def stayer() -> list:
        body = {"n": 30, "delay": 0.02, "count_file": str(files[1])}
        return stream_lines(stream_server, "gen", body)[1]

    blocker = threading.Thread(target=httpx.post, args=(url(stream_server, "gen"),),
                               kwargs={"json": {"sleep": 1.5}, "timeout": 30})
    blocker.start()
    time.sleep(0.1)
    _, kept = run_concurrently([quitter, stayer])
    blocker.join()
    assert done.is_set()
    assert [json.loads(line)["seq"] for _, line in kept] == list(range(30))
    assert json.loads(kept[0][1])["batch"] == 2
    assert read_count(files[1]) == "30 closed"
    quit_state = read_count(files[0])
    assert quit_state.endswith("closed") and int(quit_state.split()[0]) < 100, quit_state


# -- errors ----------------------------------------------------------------------------------
def test_error_before_the_first_chunk_is_an_ordinary_error(stream_server):
    r = httpx.post(url(stream_server, "gen"), json={"n": 3, "fail_at": 0}, timeout=30)
    assert r.status_code == 500
    body = r.json()
    assert body["type"] == "InternalServerException"
    assert "failed at chunk 0" in body["message"]


def test_error_mid_stream_ends_it_and_the_worker_keeps_serving(stream_server):
    got = []
    with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: the body is incomplete
        with httpx.stream("POST", url(stream_server, "gen"), timeout=30,
                          json={"n": 5, "fail_at": 2, "delay": 0.05}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                got.append(json.loads(line))
    assert [c["seq"] for c in got] == [0, 1]

    r = httpx.post(url(stream_server, "gen"), json={"n": 5, "fail_at": 2},
                   headers={"Accept": "text/event-stream"}, timeout=30)
    events = sse_events(r.text)
    assert [name for name, _ in events] == ["message", "message", "error"]
    error = json.loads(events[-1][1])
    assert error["code"] == 500 and "failed at chunk 2" in error["message"]

    pid = got[0]["pid"]
    r = httpx.post(url(stream_server, "gen"), json={"plain": True}, timeout=30)
    assert r.status_code == 200 and r.json()["pid"] == pid
    wait_logged(stream_server, "failed at chunk 2")


def test_response_timeout_is_the_time_between_chunks(stream_server):
    """slow has responseTimeout 2 s: 4 chunks a second apart pass, a 3.5 s gap does not."""
    r, lines = stream_lines(stream_server, "slow", {"n": 4, "delay": 1.0})
    assert r.status_code == 200 and len(lines) == 4
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", url(stream_server, "slow"), json={"n": 2, "delay": 3.5},
                          timeout=30) as r:
            for line in r.iter_lines():
                got.append(line)
    assert len(got) == 1
    wait_logged(stream_server, "response_timeout")


# -- the rest is unchanged -------------------------------------------------------------------
def test_non_streamed_answers_are_unchanged(stream_server):
    r = httpx.post(url(stream_server, "gen"), json={"plain": True}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    assert "transfer-encoding" not in r.headers
    assert r.json()["plain"] is True
    # asking for SSE changes nothing for an answer that is not streamed
    r = httpx.post(url(stream_server, "gen"), json={"plain": True}, timeout=30,
                   headers={"Accept": "text/event-stream"})
    assert r.headers["content-type"] == "application/json"
    assert r.json()["plain"] is True


def test_stream_latency_is_observed_at_its_last_chunk(stream_server):
    before_n = metric(stream_server, "ts_inference_requests_total", "gen")
    before_s = metric(stream_server, "modelserve_request_latency_seconds_sum", "gen")
    r, lines = stream_lines(stream_server, "gen", {"n": 4, "delay": 0.3})
    assert len(lines) == 4
    time.sleep(0.2)
    assert metric(stream_server, "ts_inference_requests_total", "gen") == before_n + 1
    latency = metric(stream_server, "modelserve_request_latency_seconds_sum", "gen") - before_s
    assert 0.85 < latency < 5, latency


# -- the transport-neutral hook --------------------------------------------------------------
def test_dataplane_infer_stream(stream_server, tmp_path):
    """DataPlane.infer_stream (for gRPC server streaming) yields each chunk; closing it early
    cancels the worker's generator. A data plane of its own, with a real worker."""
    from modelserve.config import Settings
    from modelserve.server.engine.dataplane import DataPlane
    from modelserve.server.engine.registration import RegisterRequest
    from modelserve.server.observability.metrics import ServerMetrics

    count_file = tmp_path / "count"

    async def main() -> tuple[list, list, str]:
        settings = Settings(model_store=stream_server.store, workdir=tmp_path / "work")
        plane = DataPlane(settings, ServerMetrics())
        try:
            await plane.register(RegisterRequest(url="gen.mar", initial_workers=1))
            body = json.dumps({"n": 3}).encode()
            whole = [r async for r in plane.infer_stream(
                "gen", None, body, "application/json", {}, "r1")]
            body = json.dumps({"n": 200, "delay": 0.02, "count_file": str(count_file)})
            chunks = []
            gen = plane.infer_stream("gen", None, body.encode(), "application/json", {}, "r2")
            async for r in gen:
                chunks.append(r)
                if len(chunks) == 2:
                    break
            await gen.aclose()
            for _ in range(200):
                if "closed" in read_count(count_file):
                    break
                await asyncio.sleep(0.05)
            return whole, chunks, read_count(count_file)
        finally:
            await plane.shutdown()

    whole, chunks, state = asyncio.run(main())
    assert [json.loads(r.body)["seq"] for r in whole] == [0, 1, 2]
    assert all(r.status == 200 and r.content_type == "application/json" for r in whole)
    assert len(chunks) == 2
    assert state.endswith("closed") and int(state.split()[0]) < 100, state


def test_kserve_v1_predict_on_a_streaming_model_is_400_and_stops_it(stream_server, tmp_path):
    """It was a 500 (the route read a body the stream does not have), and the generator
    kept producing for nobody."""
    count_file = tmp_path / "count"
    r = httpx.post(f"{stream_server.inference}/v1/models/gen:predict", timeout=30,
                   json={"n": 200, "delay": 0.05, "count_file": str(count_file)})
    assert r.status_code == 400, r.text
    assert "streams its answers" in r.json()["error"]
    wait_for(lambda: "closed" in read_count(count_file), timeout=10)
