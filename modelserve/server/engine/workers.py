"""Worker processes, frontend side: spawn, talk to, time out, restart.

Each worker runs ``modelserve.worker`` joined to the frontend by a Unix socketpair: forked
by the zygote (``modelserve.server.engine.zygote``), or a fresh interpreter when the zygote is off
or the model has its own installed requirements (which must not meet the zygote's modules).
A worker runs ``batch_threads`` batches at once (its batch lanes, which it reports when ready;
usually 1) and up to ``pipeline_depth - 1`` more wait in its socket, so the next batch is
already there when one finishes. A dead worker fails its in-flight requests at once,
with its exit cause and last stderr lines, and the pool starts a replacement with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from modelserve import ipc
from modelserve.errors import ModelServeError, RequestTimeoutError, WorkerDiedError
from modelserve.server.engine import streams as streaming
from modelserve.server.engine.jobs import Job, Result, encodable, infer_frame
from modelserve.server.engine.worker_spec import WorkerSpec
from modelserve.server.engine.zygote import ForkedProcess, Zygote, ZygoteError
from modelserve.server.observability.procfs import rss_bytes

log = logging.getLogger("modelserve.workers")
output_log = logging.getLogger("modelserve.workers.output")  # what the workers print

_worker_ids = itertools.count(9000)  # TorchServe numbers its workers from 9000
STDERR_TAIL = 20


class WorkerLoadError(ModelServeError):
    status = 500
    type = "WorkerLoadException"


class WorkerStoppedWhileStarting(WorkerLoadError):
    """The worker was stopped (scaled down, unregistered) before it was ready: not a failure
    of the model; its process, if one was started, has been killed."""


async def spawn_process(argv: list[str], fd: int,
                        env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start one worker interpreter (the one OS call tests may replace)."""
    return await asyncio.create_subprocess_exec(
        *argv, pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)


def _fail_all(jobs: list[Job], err: ModelServeError) -> None:
    for job in jobs:
        job.fail(err)


class WorkerProcess:
    """One worker: its process, socket, in-flight batches and state."""

    def __init__(self, spec: WorkerSpec, index: int, threads: int,
                 on_change: Callable[[], None], on_exit: Callable[[WorkerProcess], None],
                 zygote: Zygote | None = None, most_threads: int = 0) -> None:
        self.spec = spec
        self.most_threads = most_threads  # the most its pool may give it (set_threads)
        self.zygote = zygote
        self.index = index
        self.threads = threads
        self.id = next(_worker_ids)
        self.status = "STARTING"
        self.pid: int | None = None
        self.device = "cpu"
        self.start_time = time.time()
        self.load_ms = 0.0
        self.signature: dict[str, Any] | None = None  # the handler's OIP v2 metadata
        self.batch_threads = 1  # batches it runs at once, as it reports when ready
        self.inflight: dict[int, list[Job]] = {}
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._on_change = on_change
        self._on_exit = on_exit
        self._ids = itertools.count()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._streams: dict[int, dict[int, streaming.Stream | None]] = {}  # batches that stream
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # (jobs, handler ms, its metrics, answer time), run once the answers are written, or
        # before (batch_done_first: metric lines a client reads after its answer)
        self.on_batch_done: Callable[[list[Job], float, list[Any], float], None] | None = None
        self.batch_done_first = False
        # a dead worker's in-flight jobs and their error: the pool retries or fails them
        self.on_orphans: Callable[[list[Job], ModelServeError], None] = _fail_all
        self.on_timed_out: Callable[[], None] = lambda: None
        self.on_batch_limit: Callable[[int], None] = lambda limit: None
        self.death_cause = ""
        self._kill_reason = ""
        self._launched = asyncio.Event()  # start() has its process (or failed to make one)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await self._launch(child.fileno())
        finally:
            child.close()
            self._launched.set()
        self.pid = self._proc.pid
        if self.status != "STARTING":  # stop() ran while the process was being made
            parent.close()
            await self._abandon()
        self._tasks.append(asyncio.create_task(self._pump_output()))
        reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        try:
            hello = await asyncio.wait_for(ipc.read_frame(reader), self.spec.startup_timeout)
        except TimeoutError:
            await self.kill()
            if self.spec.lifecycle_log == "torchserve":  # WorkerThread.run's catch, as log4j
                log.error("Backend worker error\norg.pytorch.serve.wlm."  # prints it
                          "WorkerInitializationException: Backend worker did not respond in "
                          "given time")
            raise WorkerLoadError(
                f"worker for {self.spec.model_name} did not load within "
                f"{self.spec.startup_timeout:.0f}s"
            ) from None
        if self.status != "STARTING":  # stop() ran while the model loaded
            await self._abandon()
        if hello is None or hello.get("op") != "ready":
            await self._wait_exit(5.0)
            cause = hello.get("error") if hello else await self._death_cause()
            message = f"model {self.spec.model_name} failed to load: {cause}"
            if hello and hello.get("status") == 400:  # the archive's handler is not there
                raise WorkerLoadError(message, status=400, type="BadRequestException")
            raise WorkerLoadError(message)
        self.device = hello["device"]
        self.signature = hello.get("signature")
        self.load_ms = hello["load_ms"]
        self.batch_threads = max(1, int(hello.get("batch_threads") or 1))
        if hello.get("batch_limit"):
            self.on_batch_limit(int(hello["batch_limit"]))
        self.status = "READY"
        self._tasks.append(asyncio.create_task(self._read_results(reader)))
        self._on_change()

    async def _launch(self, fd: int) -> asyncio.subprocess.Process | ForkedProcess:
        args, env = self.spec.args(self.index, self.threads, self.most_threads), self.spec.env()
        if self.zygote is not None and not self.spec.extra_paths:
            try:
                return await self.zygote.fork(args, env, fd)
            except ZygoteError as exc:
                log.warning("%s; starting a fresh interpreter instead", exc)
        argv = [sys.executable, "-m", "modelserve.worker", *args, "--fd", str(fd)]
        return await spawn_process(argv, fd, env)

    async def stop(self, grace: float = 30.0) -> None:
        """Finish in-flight batches (up to ``grace`` seconds), then end the process."""
        if self.status in ("UNLOADING", "STOPPED", "DEAD"):
            return
        launching = self.status == "STARTING" and self._proc is None
        self.status = "UNLOADING"
        if launching:  # start() sees UNLOADING once its process exists, and kills it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._launched.wait(), self.spec.startup_timeout)
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(ipc.encode({"op": "stop"}))
            self._writer.close()
        if not await self._wait_exit(5.0):
            await self.kill()

    async def _abandon(self) -> None:
        await self.kill()
        self.status = "STOPPED"
        raise WorkerStoppedWhileStarting(
            f"a {self.spec.model_name} worker was stopped before it was ready")

    async def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._wait_exit(5.0)

    async def _wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- traffic -----------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Ready, with room in its pipeline for another batch."""
        return self.status == "READY" and \
            len(self.inflight) < self.batch_threads + self.spec.pipeline_depth - 1

    @property
    def idle(self) -> bool:
        """Ready, with a batch lane that would start a batch sent now."""
        return self.status == "READY" and len(self.inflight) < self.batch_threads

    def send(self, jobs: list[Job]) -> None:
        batch_id = next(self._ids)
        try:
            frame = infer_frame(batch_id, jobs)
        except ipc.ENCODE_ERRORS:
            # a request the input checks let through but the frame cannot carry: it alone
            # gets a 400, the rest of the batch goes on
            jobs = [job for job in jobs if encodable(job)]
            if not jobs:
                return
            frame = infer_frame(batch_id, jobs)
        now = time.perf_counter()
        for job in jobs:
            job.dispatched = now
        self.inflight[batch_id] = jobs
        assert self._writer is not None
        self._writer.write(frame)
        self._timers[batch_id] = asyncio.get_running_loop().call_later(
            self.spec.response_timeout, self._timed_out, batch_id
        )

    def set_threads(self, threads: int) -> None:
        """Run the next batches on ``threads`` torch threads (its pool grew or shrank)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(ipc.encode({"op": "threads", "n": threads}))
            self.threads = threads

    def _timed_out(self, batch_id: int) -> None:
        jobs = self.inflight.pop(batch_id, None)
        self._timers.pop(batch_id, None)
        if jobs is None:
            return
        log.error("worker %s (pid %s) exceeded response_timeout %.0fs; recycling it",
                  self.id, self.pid, self.spec.response_timeout)
        self.on_timed_out()
        err = RequestTimeoutError(
            f"model {self.spec.model_name} did not answer within "
            f"{self.spec.response_timeout:g}s (response_timeout)"
        )
        if self.spec.timeout_status != err.status:  # TorchServe's "Worker died." 500
            err = ModelServeError(err.message, status=self.spec.timeout_status)
        for job in jobs:
            job.fail(err)
        streaming.fail(self._streams.pop(batch_id, None), err)
        if self._proc is not None and self._proc.returncode is None:
            self._kill_reason = (f"recycled after exceeding response_timeout "
                                 f"{self.spec.response_timeout:g}s; ")
            self._proc.kill()  # the reader sees EOF and the pool replaces the worker

    def _chunk(self, msg: dict[str, Any]) -> None:
        """Chunks of streamed answers (modelserve.server.engine.streams); each restarts the
        batch's response_timeout, which so bounds the time between chunks."""
        batch_id = msg["id"]
        jobs = self.inflight.get(batch_id)
        if jobs is None:
            return  # already timed out
        timer = self._timers.get(batch_id)
        if timer is not None:
            timer.cancel()
            self._timers[batch_id] = asyncio.get_running_loop().call_later(
                self.spec.response_timeout, self._timed_out, batch_id)
        streams = self._streams.setdefault(batch_id, {})
        for entry in msg["out"]:
            streaming.feed(streams, jobs, entry, lambda idx: self._cancel(batch_id, idx))

    def _cancel(self, batch_id: int, idx: int) -> None:
        """A streamed request's client went away: the worker stops producing its chunks."""
        if batch_id in self.inflight and self._writer is not None \
                and not self._writer.is_closing():
            self._writer.write(ipc.encode({"op": "cancel", "id": batch_id, "idx": idx}))

    def _complete(self, msg: dict[str, Any]) -> None:
        batch_id = msg["id"]
        jobs = self.inflight.pop(batch_id, None)
        if (timer := self._timers.pop(batch_id, None)) is not None:
            timer.cancel()
        if jobs is None:
            return  # already timed out
        out = msg["out"]
        done = (jobs, msg.get("ms", 0.0), msg.get("metrics") or [], time.perf_counter())
        if self.on_batch_done is not None and self.batch_done_first:
            try:  # its metric lines reach the log before the answers, which it cannot stop
                self.on_batch_done(*done)
            except Exception:
                log.exception("worker %s: batch bookkeeping failed", self.id)
        streams = self._streams.pop(batch_id, None)
        if streams is not None:
            streaming.finish(streams, jobs, out, WorkerDiedError(
                f"worker answered {len(out)} of {len(jobs)} requests"))
        else:
            for job, item in zip(jobs, out):
                job.resolve(Result(*item[:4], len(jobs), item[4] if len(item) > 4 else None))
            if len(out) < len(jobs):  # never leave a request hanging on a short answer
                err = WorkerDiedError(f"worker answered {len(out)} of {len(jobs)} requests")
                for job in jobs[len(out):]:
                    job.fail(err)
        if self.on_batch_done is not None and not self.batch_done_first:
            # the requests' tasks, woken above, run first: the bookkeeping never delays them
            asyncio.get_running_loop().call_soon(self.on_batch_done, *done)
        self._on_change()

    async def _read_results(self, reader: asyncio.StreamReader) -> None:
        try:
            while (msg := await ipc.read_frame(reader)) is not None:
                op = msg.get("op")
                if op == "result":
                    self._complete(msg)
                elif op == "chunk":
                    self._chunk(msg)
                elif op == "lanes":  # how many batches it takes at once changed
                    self.batch_threads = max(1, int(msg.get("n") or 1))
                    self._on_change()
        except ConnectionError:
            pass  # the process died (killed, crashed): its exit status tells why
        except Exception as exc:  # a broken frame or message: the worker cannot be trusted
            log.error("worker %s: broken connection: %s: %s", self.id, type(exc).__name__, exc)
            self._kill_reason += f"protocol error ({exc}); "
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
        await self._died()

    async def _pump_output(self) -> None:
        """Forward the worker's stdout/stderr to the log; keep the tail for death reports."""
        assert self._proc is not None and self._proc.stdout is not None
        name = f"{self.spec.model_name}:{self.id}"
        # TorchServe's name for the worker, which its model_log.log shows (logfiles.py)
        worker = f"W-{self.id}-{self.spec.model_name}_{self.spec.model_version}"
        async for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            output_log.info("[%s] %s", name, line, extra={"worker": worker, "worker_line": line})

    async def _death_cause(self) -> str:
        await self._wait_exit(2.0)
        code = self._proc.returncode if self._proc else None
        if code is None:
            how = "connection lost"
        elif code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        how = self._kill_reason + how
        tail = " | ".join(list(self.stderr_tail)[-5:])
        return f"{how}; last output: {tail}" if tail else how

    async def _died(self) -> None:
        was_stopping = self.status == "UNLOADING"
        self.status = "STOPPED" if was_stopping else "DEAD"
        if self._writer is not None:
            self._writer.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        cause = self.death_cause = await self._death_cause()
        if self.inflight:
            err = WorkerDiedError(
                f"worker {self.id} (pid {self.pid}) for model {self.spec.model_name} died "
                f"({cause})")
            orphans = [job for jobs in self.inflight.values() for job in jobs]
            self.inflight.clear()
            for streams in self._streams.values():  # begun streams cannot be retried
                streaming.fail(streams, err)
            self._streams.clear()
            self.on_orphans(orphans, err)
        if not was_stopping:
            log.error("worker %s (pid %s) of %s died: %s",
                      self.id, self.pid, self.spec.model_name, cause)
            log.info("%s Worker disconnected. %s", self.id, self.status)  # TorchServe's line
        self._on_exit(self)
        self._on_change()

    def describe(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "startTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.start_time)) + "Z",
            "status": self.status,
            "memoryUsage": rss_bytes(self.pid),
            "pid": self.pid,
            "gpu": self.device.startswith("cuda"),
            "gpuUsage": "N/A",
            "batchThreads": self.batch_threads,  # modelserve's: batches it runs at once
            "threads": self.threads,  # modelserve's: its torch threads
        }

