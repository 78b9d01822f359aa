"""Batch lanes: one worker process running several batches at once, each on its own thread.

On CPU, independent batches on one torch thread each beat one batch on all of a worker's
threads: that batch's OpenMP threads meet at every operator, and an idle one sleeps (the
wait policy workers use, so that they leave the frontend its CPU) and is slow to wake.
Measured on 2 cores (resnet, TorchScript, batch 8, one process): one lane of 2 threads
217-261 samples/s, two lanes of 1 thread 435-470. The model's weights and torch are in
memory once, where a second worker process would hold its own.

Each lane has its own copy of the handler (``Handler.copy``: the model is shared, the
attributes a handler sets per batch are not), its own Context and Streamer; frames go through
one Channel, so a lone lane reads its batches itself. Torch calls release the GIL, so the
lanes' models run in parallel while Python code (decoding, the handler's own steps) takes
turns.

A handler runs in several lanes only when asked (``batch_threads`` in config.yaml or
``batchThreads`` in model-config.yaml) or, by default (``auto``), when its class declares
``thread_safe = True`` (modelserve's built-in handlers do): TorchServe handlers were written for
one batch at a time, and some hold objects that two threads must not use at once (a Hugging
Face tokenizer raises "Already borrowed"). In ``auto`` a worker has one lane per torch thread
(at most ``AUTO_MAX``, CPU only), of which the ``Gate`` opens the others only where they
pay: a batch is already waiting whenever lane 0 asks for one, and the model call takes most of each
batch (lanes that mostly run Python only queue for the GIL) and more than a millisecond.
Opened where they do not pay, they cost: digits (a model call of ~0.1 ms, the frontend the
bottleneck) went from 6.1k to 5.1k req/s, p99 x4, with two lanes open.

A lone lane runs on all the worker's threads only where the model's work pays for an OpenMP
team (``Gate.wide``): a team meets at every operator, so a call of ~0.1 ms gains nothing from
it, and its idle thread's short spin before sleeping (``process.preset_thread_env``) is taken
from the frontend. A handler whose work per batch (CPU time on one thread) is WIDE_OPEN_S or
more gets all of them (resnet at batch 1, two cores: 17 ms on one thread, 9-11 ms on two).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

from modelserve import model_clock
from modelserve.worker import streaming
from modelserve.worker.batch import BatchRunner
from modelserve.worker.channel import Channel

log = logging.getLogger("modelserve.worker")

AUTO = 0  # --batch-threads 0: choose (plan)
AUTO_MAX = 4  # past a few lanes, their Python steps queue for the GIL
# The Gate's levels, compared with moving averages over batches. The other lanes open when
# the next batch was already here when lane 0 asked for it (QUEUED_OPEN of its batches: a busy
# lane is not enough, at concurrency 1 it is busy ~90 % of the time with nothing queued behind
# it). They close when the open lanes together run under BUSY_CLOSE batches at a time (busy x
# open, busy: the share of a lane's time not waiting for a batch): one request at a time
# comes to < 1 however the lanes share it, and one lane on all the threads runs it faster.
# Both need the model's share of a batch's time and the model's time per batch (s) at their
# levels. SETTLE batches pass between changes, except that a lane that waited IDLE_S for a
# batch closes the others at once: the worker sat idle.
QUEUED_OPEN, BUSY_CLOSE = 0.9, 1.0
SHARE_OPEN, SHARE_CLOSE = 0.6, 0.4
MODEL_OPEN, MODEL_CLOSE = 0.001, 0.0005
SETTLE, SMOOTHING, IDLE_S = 16, 0.2, 1.0
# A lone lane's team: all the threads from a handler's work per batch of WIDE_OPEN_S (CPU s on
# one thread), back to one below WIDE_CLOSE_S. The work is estimated as the lane thread's CPU
# time x the threads it ran on (CPU, not wall time: a busy machine does not inflate it), about
# its CPU time on one thread, so neither change undoes itself.
WIDE_OPEN_S, WIDE_CLOSE_S = 0.002, 0.001


def plan(requested: int, thread_safe: bool, gpu: int | None, threads: int) -> int:
    """How many lanes a worker has: as requested, else (AUTO) one per torch thread (at most
    AUTO_MAX) for a thread-safe handler on CPU, else one."""
    if requested != AUTO:
        return requested
    if gpu is not None or not thread_safe:
        return 1
    return max(1, min(threads, AUTO_MAX))


def threads_each(threads: int, lanes: int, index: int = 0) -> int:
    """Lane ``index``'s share of the worker's torch threads: all of them shared out (the
    first lanes take the remainder), at least one each."""
    return max(1, threads // lanes + (index < threads % lanes))


def set_torch_threads(threads: int) -> None:
    """This thread's torch (OpenMP, MKL) thread count: the setting is per calling thread, so
    each lane sets its own."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class Gate:
    """How many of the worker's lanes take batches now.

    All of them when the count was asked for. In auto, lane 0 alone, on all the worker's
    threads, until batches queue for it (QUEUED_OPEN) and the model call
    (``modelserve.model_clock``) takes SHARE_OPEN of each batch's time and at least
    MODEL_OPEN; all of them, on a share of the threads each, until any of these falls to its
    CLOSE level or a lane waited IDLE_S for work. Each change is sent to the frontend
    (``{"op": "lanes", "n"}``), which then fills batches for the lanes that take them.
    """

    def __init__(self, channel: Channel, lanes: int, adaptive: bool, threads: int = 1) -> None:
        self.lanes = lanes
        self.threads = threads
        self.adaptive = adaptive and lanes > 1
        self.open = 1 if self.adaptive else lanes
        self.most = max(1, min(lanes, threads))  # the most lanes auto opens: one a thread
        self.wide = True  # a lone lane runs on all the threads (until its work proves small)
        self.queued = 0.0  # moving averages
        self.busy = 0.0
        self.share = 0.0
        self.model_s = 0.0
        self.work = 0.0
        self._since = 0  # batches since the last change
        self._wide_since = 0  # batches since the last change of ``wide``
        self._channel = channel
        self._cond = threading.Condition()

    def wait(self, index: int) -> bool:
        """Block until lane ``index`` may take a batch; False once the channel closed."""
        if index < self.open:
            return True
        with self._cond:
            while index >= self.open and not self._channel.closed:
                self._cond.wait()
        return not self._channel.closed

    def threads_for(self, index: int) -> int:
        """The torch threads lane ``index`` runs its next batch on: while it is the only lane
        open, all of the worker's for a model whose work pays for them (a lone lane on one
        thread would leave cores idle at low load), else one; its share once others are
        open."""
        if self.open == 1:
            return self.threads if self.wide else 1
        return threads_each(self.threads, self.lanes, index)

    def weigh(self, cpu_s: float, threads: int) -> None:
        """A lane's batch took ``cpu_s`` of its thread's CPU time on a team of ``threads``:
        keep ``wide`` where such work pays for a team."""
        with self._cond:
            work = cpu_s * threads
            first = self._wide_since == 0
            self.work = work if first else self.work + SMOOTHING * (work - self.work)
            self._wide_since += 1
            if self._wide_since < SETTLE:
                return
            want = self.work >= (WIDE_CLOSE_S if self.wide else WIDE_OPEN_S)
            if want != self.wide:
                self.wide, self._wide_since = want, 1
                log.info("a lone batch lane runs on %s: the handler's work is %.2f ms a batch",
                         f"all {self.threads} threads" if want else "one thread",
                         self.work * 1000)

    def set_threads(self, threads: int) -> None:
        """The frontend's pool grew or shrank: the lanes run their next batches on a share
        of ``threads``, and in auto no more lanes are open than there are threads."""
        with self._cond:
            self.threads = threads
            self.most = max(1, min(self.lanes, threads))
            if self.adaptive and self.open > self.most:
                self.open, self._since = 1, 0
                self._channel.send({"op": "lanes", "n": 1})
                self._cond.notify_all()

    def wake(self) -> None:
        """The channel closed: parked lanes end."""
        with self._cond:
            self._cond.notify_all()

    def record(self, queued: bool, waited_s: float, batch_s: float, model_s: float) -> None:
        """A lane found its batch already here (``queued``) or waited ``waited_s`` for it; the
        batch then took ``batch_s``, ``model_s`` of it in model calls."""
        if not self.adaptive or batch_s <= 0:
            return
        with self._cond:
            self.queued += SMOOTHING * (queued - self.queued)
            self.busy += SMOOTHING * (batch_s / (batch_s + waited_s) - self.busy)
            self.share += SMOOTHING * (min(1.0, model_s / batch_s) - self.share)
            self.model_s += SMOOTHING * (model_s - self.model_s)
            self._since += 1
            if self.open > 1 and waited_s >= IDLE_S:
                pays = False
            elif self._since < SETTLE:
                return
            elif self.open == 1:
                pays = self.queued >= QUEUED_OPEN and self.share >= SHARE_OPEN \
                    and self.model_s >= MODEL_OPEN
            else:
                pays = self.busy * self.open > BUSY_CLOSE and self.share > SHARE_CLOSE \
                    and self.model_s > MODEL_CLOSE
            want = self.most if pays else 1
            if want == self.open:
                return
            self.open, self._since = want, 0
            log.info("%d batch lane(s) open: batches queued for %.0f%% of them, lanes busy "
                     "%.0f%% of the time, the model %.1f ms a batch, %.0f%% of its time", want,
                     self.queued * 100, self.busy * 100, self.model_s * 1000, self.share * 100)
            self._channel.send({"op": "lanes", "n": want})  # under the lock: in order
            self._cond.notify_all()


def serve(channel: Channel, runners: list[BatchRunner], gate: Gate) -> None:
    """Answer batches until the frontend says stop or closes the socket: lane 0 on this
    thread, the others on their own."""
    others = [threading.Thread(target=_lane, args=(channel, runner, gate, i),
                               name=f"lane-{i}", daemon=True)
              for i, runner in enumerate(runners[1:], start=1)]
    for thread in others:
        thread.start()
    _lane(channel, runners[0], gate, 0)
    gate.wake()
    for thread in others:
        thread.join()


def _lane(channel: Channel, runner: BatchRunner, gate: Gate, index: int) -> None:
    threads = 0
    streaming.install(runner.streamer)
    model_clock.take()  # what loading and the probes ran on this thread
    try:
        while gate.wait(index):  # time parked here is not time waiting for work
            if (want := gate.threads_for(index)) != threads:
                set_torch_threads(threads := want)
            # only the adaptive gate reads it: no syscall per batch for a fixed count
            queued, waiting = gate.adaptive and channel.ready(), time.perf_counter()
            if (msg := channel.next_batch()) is None:
                break
            _run(channel, runner, gate, msg, queued, time.perf_counter() - waiting, threads)
    except (BrokenPipeError, ConnectionResetError):
        channel.closed = True  # the frontend is gone; the other lanes end with their batch
        gate.wake()
    except BaseException as exc:  # a broken frame, or a handler that exits the process
        # the whole worker goes, whichever lane this is: the frontend sees it die, fails or
        # retries its batches, and starts another
        log.critical("the worker exits:\n%s", traceback.format_exc())
        logging.shutdown()
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        os._exit(code)


def _run(channel: Channel, runner: BatchRunner, gate: Gate, msg: dict[str, Any],
         queued: bool, waited_s: float, threads: int) -> None:
    runner.streamer.begin(msg["id"], len(msg["reqs"]))
    try:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        out = runner.run_batch(msg["reqs"])
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        metrics = runner.context.metrics.drain()
        channel.send({"op": "result", "id": msg["id"], "out": out, "ms": seconds * 1000,
                      "metrics": metrics})
    finally:
        runner.streamer.end()
    gate.record(queued, waited_s, seconds, model_clock.take())
    gate.weigh(cpu, threads)
