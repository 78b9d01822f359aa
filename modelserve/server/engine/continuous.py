"""Continuous batching (model-config.yaml's ``continuousBatching: true``), as TorchServe's
``ContinuousBatching`` aggregator runs it: a batch goes to its worker step by step, and new
requests join it between steps.

- Each step sends the worker every request it is running, plus queued ones up to
  ``batchSize``. A request already stepped goes with its headers and no data (its handler
  keeps its state, e.g. a KV cache, under ``context.request_ids``): the handler sees ``{}``
  as its input, as TorchServe's backend gives it.
- An answer with the ``ts_stream_next: true`` header (set by the handler, or by
  ``context.stopping_criteria`` returning False) is one chunk of the request's streamed
  answer and keeps the request in the batch; any other answer is its last chunk, or its whole
  answer when it is the first.
- A request's running state lives in its worker: it stays there, and a worker runs one step
  at a time. A client that went away is left out of the next step (TorchServe: "Connection to
  client got closed; Removing job"). A worker that dies or is scaled away takes its requests'
  state: a request with chunks sent fails, one never answered is queued again (once).
- OIP v2 requests run one step each (their answers end at the first step).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from modelserve.errors import ModelServeError, ServiceUnavailableError
from modelserve.ipc import STREAM_NEXT
from modelserve.server.engine.batching import QUEUE_SWEEP_S, Batcher
from modelserve.server.engine.jobs import Job, Result
from modelserve.server.engine.pool import WorkerPool
from modelserve.server.engine.streams import Stream
from modelserve.server.engine.workers import WorkerProcess

log = logging.getLogger("modelserve.continuous")

@dataclass(eq=False, slots=True)
class Running:
    """One request in a worker's continuous batch."""

    job: Job
    steps: int = 0
    stream: Stream | None = None  # its answer, once its first chunk came
    left: bool = False  # its client closed the stream: not stepped again

    def step(self, loop: asyncio.AbstractEventLoop) -> Job:
        """The request as this step sends it: its data only the first time."""
        job, first = self.job, self.steps == 0
        return Job(job.request_id, job.content_type, job.body if first else None, job.headers,
                   loop.create_future(), v2=job.v2 if first else None)

    @property
    def finished(self) -> bool:
        return self.left or self.job.future.done() and (self.stream is None or self.stream.done)


class ContinuousBatcher(Batcher):
    """The batcher of a model whose config turns ``continuousBatching`` on."""

    def __init__(self, name: str, pool: WorkerPool, batch_size: int,
                 max_batch_delay_ms: float, queue_size: int, queue_timeout_s: float) -> None:
        super().__init__(name, pool, batch_size, max_batch_delay_ms, queue_size,
                         queue_timeout_s)
        self.running: dict[WorkerProcess, list[Running]] = {}
        self._stepping: set[WorkerProcess] = set()

    async def close(self, error: ServiceUnavailableError) -> None:
        await super().close(error)
        for batch in self.running.values():
            for entry in batch:
                _end(entry, error)
        self.running.clear()

    def _dispatch(self) -> bool:
        """Send each ready worker with no step in flight its next step; whether one went."""
        sent = False
        for worker in self.pool.workers:
            if worker in self._stepping or worker.status != "READY" or worker.inflight:
                continue
            batch = self.running.setdefault(worker, [])
            batch[:] = [entry for entry in batch if not entry.finished]
            batch += [Running(job) for job in self._take(self.batch_size - len(batch))]
            if batch:
                self._send(worker, batch)
                sent = True
        for worker in [w for w in self.running if w not in self.pool.workers]:
            for entry in self.running.pop(worker):  # stopped with nothing in flight
                _end(entry, _lost())
        return sent

    def _send(self, worker: WorkerProcess, batch: list[Running]) -> None:
        loop = asyncio.get_running_loop()
        entries = list(batch)
        steps = [entry.step(loop) for entry in entries]
        for entry in entries:
            if entry.steps == 0:  # its queue time ends here
                entry.job.dispatched = time.perf_counter()
        left = len(steps)

        def one_done(_: asyncio.Future[Result]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._stepped(worker, entries, steps)

        self._stepping.add(worker)
        for step in steps:
            step.future.add_done_callback(one_done)
        worker.send(steps)

    def _stepped(self, worker: WorkerProcess, entries: list[Running], steps: list[Job]) -> None:
        """A step's answers reached every request of it: chunks to their streams, and the
        requests that finished leave the batch."""
        self._stepping.discard(worker)
        try:
            for entry, step in zip(entries, steps):
                first = entry.steps == 0
                entry.steps += 1
                if step.future.cancelled():
                    entry.left = True
                    continue
                error = step.future.exception()
                if error is None:
                    _answer(entry, step.future.result())
                elif first and worker.status in ("DEAD", "STOPPED") and not entry.job.retried:
                    # its worker died before a first answer: it starts afresh on another,
                    # once (it may be what killed the worker)
                    entry.job.retried = True
                    if entry in (batch := self.running.get(worker, [])):
                        batch.remove(entry)
                    self.pending.appendleft(entry.job)
                else:
                    _end(entry, error)
        finally:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.pending and not self.pool.workers \
                        and (error := self._no_worker()) is not None:
                    self._fail_pending(error)  # scaled to zero while they waited
                elif self._dispatch():
                    continue
                await self._wait(QUEUE_SWEEP_S if self.pending else None)
                self._expire_queued(self.pending, time.perf_counter())
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the model from serving
                log.exception("continuous batcher for %s failed; continuing", self.name)
                await asyncio.sleep(0.01)


def _lost() -> ModelServeError:
    return ServiceUnavailableError("the worker running this request's continuous batch "
                                   "stopped; the request's state went with it")


def _answer(entry: Running, result: Result | Stream) -> None:
    """One step's answer for one request: a chunk, its last chunk, or its whole answer."""
    if isinstance(result, Stream):  # the handler streamed within the step
        result.close()
        _end(entry, ModelServeError("with continuousBatching a handler answers each step "
                                    "with one result per request (ts_stream_next: true for "
                                    "more), not a stream"))
        return
    more = result.headers.get(STREAM_NEXT) == "true" and entry.job.v2 is None
    stream = entry.stream
    if stream is None:
        if not more:
            entry.job.resolve(result)
            return
        stream = entry.stream = Stream(result.status, result.content_type, result.headers,
                                       result.batch_size, entry.job.request_id,
                                       lambda: setattr(entry, "left", True))
        stream.push(result.body)
        if entry.job.future.done():  # its client gave up before the first chunk
            stream.close()
        entry.job.resolve(stream)  # type: ignore[arg-type]
        return
    if result.status >= 400:
        stream.end(ModelServeError.from_body(result.status, result.body))
        return
    stream.push(result.body)
    if not more:
        stream.end()


def _end(entry: Running, error: ModelServeError | BaseException) -> None:
    """The request cannot go on: its stream ends with ``error``, or it fails with it."""
    err = error if isinstance(error, ModelServeError) else \
        ModelServeError(f"continuous batch step failed: {error!r}")
    if entry.stream is not None:
        entry.stream.end(err)
    else:
        entry.job.fail(err)
    entry.left = True
