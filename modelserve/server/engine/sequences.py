"""Sequence batching for stateful models (TorchServe's ``sequenceBatching``).

A stateful handler keeps a sequence's state in its own worker's memory between requests (an
LSTM's hidden state, a running sum) and finds it by the request's ``ts_request_sequence_id``
header (``context.get_sequence_id``). So the requests of one sequence must all reach the same
worker, one at a time and in the order they came. TorchServe's rules, kept here:

- A request without the header starts a new sequence: the frontend names it
  ``ts-seq-<uuid>`` and adds ``ts_request_sequence_start: true`` for the handler.
- At most ``maxNumSequence`` sequences are open at once (at least ``batchSize`` x
  ``maxWorkers``), each with at most ``maxSequenceJobQueueSize`` requests waiting; past
  either, 503 with TorchServe's message.
- A sequence closes when it waited ``sequenceMaxIdleMSec`` for its next request, when it has
  nothing queued once ``sequenceTimeoutMSec`` passed since it opened, or when the handler's
  answer carries ``ts_request_sequence_end`` (the ids, ``;``-separated). Closing frees its
  place. A later request naming it is 503 ("closed, or expired", TorchServe's words and its
  documented rule: TorchServe itself opens the id again, on whichever worker takes it, where
  the handler finds no state and fails); the last CLOSED_KEPT closed ids are remembered.

Each sequence is bound to a ready worker when it first has work (the one with the fewest
sequences), and stays there while that worker lives; its requests that a dead worker held
are sent again to the next one. A batch is the head request of each of a worker's sequences
that has none running, up to ``batchSize``; it goes out as soon as the worker has a free
lane, so batches fill while the worker is busy and an idle worker adds no delay.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from modelserve.config import Settings
from modelserve.errors import ServiceUnavailableError
from modelserve.server.engine.batching import QUEUE_SWEEP_S, Batcher
from modelserve.server.engine.jobs import Job, Result
from modelserve.server.engine.pool import WorkerPool
from modelserve.server.engine.workers import WorkerProcess

log = logging.getLogger("modelserve.sequences")

SEQUENCE_ID = "ts_request_sequence_id"  # TorchServe's default header names
SEQUENCE_START = "ts_request_sequence_start"
SEQUENCE_END = "ts_request_sequence_end"
CLOSED_KEPT = 10_000  # closed sequence ids remembered (refused), the oldest forgotten first


@dataclass(frozen=True, slots=True)
class SequenceHeaders:
    """The header names of sequence batching: config.properties' (and config.yaml's)
    ``ts_header_key_sequence_id``, ``_start`` and ``_end``."""

    id: str = SEQUENCE_ID
    start: str = SEQUENCE_START
    end: str = SEQUENCE_END

    @classmethod
    def of(cls, settings: Settings) -> SequenceHeaders:
        return cls(settings.ts_header_key_sequence_id, settings.ts_header_key_sequence_start,
                   settings.ts_header_key_sequence_end)

    def worker_env(self) -> dict[str, str]:
        """The variables TorchServe's ``ts/context.py`` takes the names from, so that the
        handler's ``context.header_key_sequence_*`` are the frontend's (TorchServe leaves them
        to the operator, and a handler may then look for headers nobody sends)."""
        return {"TS_REQUEST_SEQUENCE_ID": self.id, "TS_REQUEST_SEQUENCE_START": self.start,
                "TS_REQUEST_SEQUENCE_END": self.end}


@dataclass(eq=False, slots=True)
class Sequence:
    """One open sequence: its queued requests, its worker, the one it runs now."""

    id: str
    expires: float  # perf_counter time its sequenceTimeoutMSec runs out (inf: never)
    idle_since: float
    jobs: deque[Job] = field(default_factory=deque)
    worker: WorkerProcess | None = None
    running: Job | None = None


class SequenceBatcher(Batcher):
    """The batcher of a model whose config turns sequence batching on (``ModelConfig``'s
    ``sequenced``); ``pending`` stays empty, the requests wait in their sequences."""

    def __init__(self, name: str, pool: WorkerPool, batch_size: int, max_batch_delay_ms: float,
                 queue_size: int, queue_timeout_s: float, *, max_idle_ms: int,
                 timeout_ms: int, max_sequences: int, max_queued: int,
                 headers: SequenceHeaders = SequenceHeaders()) -> None:
        super().__init__(name, pool, batch_size, max_batch_delay_ms, queue_size,
                         queue_timeout_s)
        self.max_idle = max_idle_ms / 1000.0
        self.timeout = timeout_ms / 1000.0 if timeout_ms > 0 else math.inf
        self.max_sequences = max_sequences
        self.max_queued = max_queued
        self.headers = headers
        self.sequences: dict[str, Sequence] = {}
        self.closed: OrderedDict[str, None] = OrderedDict()

    @property
    def queued(self) -> int:
        return sum(len(seq.jobs) for seq in self.sequences.values())

    def _refused(self) -> ServiceUnavailableError:
        """TorchServe's 503 for a request no sequence can take
        (``ApiUtils.getStreamingInferenceErrorResponseMessage``)."""
        return ServiceUnavailableError(
            f'Model "{self.name}" has no worker to serve inference request. Please use scale '
            "workers API to add workers. If this is a sequence inference, please check if it "
            "is closed, or expired; or exceeds maxSequenceJobQueueSize")

    def submit(self, job: Job) -> None:
        if (error := self._closed or self._no_worker()) is not None:
            raise error
        names = self.headers
        sid = job.headers.get(names.id)
        if not sid:
            sid = job.headers[names.id] = f"ts-seq-{uuid.uuid4()}"
            job.headers[names.start] = "true"
        seq = self.sequences.get(sid)
        if seq is not None and self._expired(seq, time.perf_counter()):
            self._close(sid)  # whether or not the sweep came round to it yet
            seq = None
        if seq is None:
            if sid in self.closed:
                log.warning("Skip the requestId: %s for sequence: %s: it is closed or expired",
                            job.request_id, sid)
                raise self._refused()
            if len(self.sequences) >= self.max_sequences:
                log.warning("Skip the requestId: %s for sequence: %s due to jobGroups size: "
                            "%d exceeding maxNumSequence: %d", job.request_id, sid,
                            len(self.sequences), self.max_sequences)
                raise self._refused()
            now = time.perf_counter()
            seq = self.sequences[sid] = Sequence(sid, now + self.timeout, now)
            log.info("added jobGroup for sequenceId:%s", sid)
        elif len(seq.jobs) >= self.max_queued:
            raise self._refused()
        job.sequence = sid
        seq.jobs.append(job)
        self._wake.set()

    def requeue(self, jobs: list[Job]) -> None:
        """A dead worker's requests: back at the head of their sequences, which move to
        another worker."""
        for job in reversed(jobs):
            seq = self.sequences.get(job.sequence)
            if seq is None:
                now = time.perf_counter()
                seq = self.sequences[job.sequence] = Sequence(job.sequence, now + self.timeout,
                                                              now)
            if seq.running is job:
                seq.running = None
            seq.worker = None
            seq.jobs.appendleft(job)
        self._wake.set()

    async def close(self, error: ServiceUnavailableError) -> None:
        await super().close(error)
        self._fail_queued(error)
        self.sequences.clear()

    def _done(self, seq: Sequence, job: Job) -> None:
        """``job`` was answered (or failed): its sequence may run its next request; an answer
        that says sequences ended closes them."""
        if seq.running is not job:
            return  # requeued from a dead worker meanwhile
        seq.running = None
        seq.idle_since = time.perf_counter()
        future = job.future
        if not future.cancelled() and future.exception() is None:
            result = future.result()
            ended = result.headers.get(self.headers.end) if result.__class__ is Result \
                else None
            if ended:
                for sid in ended.split(";"):
                    self._end(sid.strip())
        self._wake.set()

    def _close(self, sid: str) -> Sequence | None:
        """Forget an open sequence, and remember that it closed."""
        seq = self.sequences.pop(sid, None)
        if seq is not None:
            self.closed[sid] = None
            if len(self.closed) > CLOSED_KEPT:
                self.closed.popitem(last=False)
        return seq

    def _end(self, sid: str) -> None:
        seq = self._close(sid)
        if seq is None:
            return
        log.info("SequenceId %s is completed", sid)
        if seq.jobs:
            error = ServiceUnavailableError(f"sequence {sid} of model \"{self.name}\" ended "
                                            "before this request ran")
            while seq.jobs:
                seq.jobs.popleft().fail(error)

    def _expired(self, seq: Sequence, now: float) -> bool:
        """Nothing of it waits or runs, and it sat idle too long or its session is over."""
        return not seq.jobs and seq.running is None and \
            now >= min(seq.idle_since + self.max_idle, seq.expires)

    def _sweep(self, now: float) -> float | None:
        """Close the sequences that are done waiting, fail requests queued too long; the time
        until the next sweep is due (None: nothing to watch)."""
        due: list[float] = []
        for sid, seq in list(self.sequences.items()):
            self._expire_queued(seq.jobs, now)
            if seq.jobs:
                due.append(now + QUEUE_SWEEP_S)
            elif seq.running is None:
                if self._expired(seq, now):
                    self._close(sid)
                    log.debug("sequence %s of %s closed: idle or timed out", sid, self.name)
                else:
                    due.append(min(seq.idle_since + self.max_idle, seq.expires))
        return min(due) - now if due else None

    def _bind(self, seq: Sequence, ready: list[WorkerProcess],
              held: Counter[WorkerProcess]) -> WorkerProcess | None:
        """The sequence's worker: its own while that one is ready, else the ready worker
        holding the fewest sequences (``held``, kept up to date)."""
        worker = seq.worker
        if worker is not None and worker.status == "READY" and worker in self.pool.workers:
            return worker
        if not ready:
            return None
        if worker is not None:
            held[worker] -= 1
        seq.worker = min(ready, key=lambda w: held[w])
        held[seq.worker] += 1
        return seq.worker

    def _dispatch(self) -> bool:
        """Send each worker with a free lane the next request of each of its sequences, the
        longest waiting first; whether a batch went out."""
        ready = [worker for worker in self.pool.workers if worker.status == "READY"]
        held = Counter(seq.worker for seq in self.sequences.values() if seq.worker is not None)
        waiting = [seq for seq in self.sequences.values() if seq.running is None and seq.jobs]
        waiting.sort(key=lambda seq: seq.jobs[0].arrival)
        batches: dict[WorkerProcess, list[Job]] = {}
        for seq in waiting:
            worker = self._bind(seq, ready, held)
            if worker is None or not worker.idle:
                continue
            batch = batches.setdefault(worker, [])
            if len(batch) >= self.batch_size:
                continue
            while seq.jobs:
                job = seq.jobs.popleft()
                if self.runnable(job):
                    seq.running = job
                    job.future.add_done_callback(lambda _, s=seq, j=job: self._done(s, j))
                    batch.append(job)
                    break
        sent = False
        for worker, batch in batches.items():
            if batch:
                worker.send(batch)
                sent = True
        return sent

    def _fail_queued(self, error: ServiceUnavailableError) -> None:
        for seq in self.sequences.values():
            while seq.jobs:
                seq.jobs.popleft().fail(error)

    async def _run(self) -> None:
        while True:
            try:
                wait = self._sweep(time.perf_counter())
                if any(seq.jobs for seq in self.sequences.values()):
                    if not self.pool.workers and (error := self._no_worker()) is not None:
                        self._fail_queued(error)  # scaled to zero while they waited
                    elif self._dispatch():
                        continue  # another lane may take the next batch
                await self._wait(wait)
            except Exception:  # a bug here must not stop the model from serving
                log.exception("sequence batcher for %s failed; continuing", self.name)
                await self._wait(0.01)
