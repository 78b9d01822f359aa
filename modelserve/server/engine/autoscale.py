"""The autoscaler: each model version's workers between its minWorkers and maxWorkers.

Every ``interval_ms`` it looks at each version's pool and queue (``sample``), asks the policy
(``scaling_policy``) what each wants and the budget (``scaling_budget``) what the machine's
cores allow, and scales the pools one worker at a time: a new one is forked like any other
(the zygote: ~150 ms plus the model's load), a removed one drains its batches first. After
each change the pool's workers are told their new thread count (the cores shared among
them). A version with minWorkers 0 that has no worker makes a request wait for one instead
of answering 503. It never moves a pool outside the bounds the configuration or the scale
API set, and leaves a model alone while a management call on it is in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from modelserve.autoscale_config import AutoscaleSettings
from modelserve.server.engine.pool import STABLE_AFTER_S, cpu_count
from modelserve.server.engine.registry import ModelVersion
from modelserve.server.engine.scaling_budget import Claim, Verdict, arbitrate, gpu_room
from modelserve.server.engine.scaling_policy import (
    HOLD,
    USE_WINDOW_S,
    Decision,
    Sample,
    ScaleState,
    autoscaled,
    decide,
)
from modelserve.server.observability.gpu import gpu_stats

log = logging.getLogger("modelserve.autoscale")

REFUSAL_LOG_S = 60.0  # the same refusal is logged again after this long


def key(mv: ModelVersion) -> str:
    return f"{mv.name}/{mv.version}"


def sample(mv: ModelVersion, now: float) -> Sample:
    """What a version's pool and queue show now: workers, lanes open and busy, and the
    requests waiting for a worker (queued in the batcher, or in a worker's socket behind
    its busy lanes) with the age of the oldest."""
    live = ready = lanes = queued = 0
    busy = 0.0
    oldest = now
    for worker in mv.pool.workers:
        if worker.status == "STARTING":
            live += 1
        if worker.status != "READY":
            continue
        live += 1
        ready += 1
        lanes += worker.batch_threads
        batches = list(worker.inflight.values())
        busy += min(len(batches), worker.batch_threads)
        for jobs in batches[worker.batch_threads:]:  # sent in order; lanes take them in order
            if jobs:
                queued += len(jobs)
                oldest = min(oldest, jobs[0].arrival)
    pending = mv.batcher.pending
    if pending:
        queued += len(pending)
        oldest = min(oldest, pending[0].arrival)
    pool, cfg = mv.pool, mv.config
    # a worker died or failed to start since the pool was last stable: not one more
    unhealthy = pool.crash_looping or time.time() - pool.last_crash < STABLE_AFTER_S
    return Sample(now, live, ready, lanes, busy, queued, now - oldest if queued else 0.0,
                  cfg.min_workers, cfg.max_workers, unhealthy)


class Autoscaler:
    def __init__(self, settings: AutoscaleSettings,
                 versions: Callable[[], list[ModelVersion]],
                 locked: Callable[[str], bool]) -> None:
        """``versions()``: every registered version; ``locked(name)``: a management call on
        that model is in progress (the autoscaler then leaves it alone)."""
        self.settings = settings
        self.cores = settings.cores or cpu_count()
        self._versions = versions
        self._locked = locked
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scaling: dict[ModelVersion, asyncio.Task[None]] = {}
        self._draining: set[asyncio.Task[None]] = set()  # removed workers finishing batches

    def attach(self, mv: ModelVersion) -> None:
        """A new version: its autoscaling state (its model-config.yaml ``autoscale:`` over
        the server's), and a request that finds no worker asks for one."""
        knobs = self.settings.merged(mv.config.autoscale)
        # a stateful model's sequences, a continuous batch's requests: state in their workers
        if mv.config.sequenced or mv.config.continuous_batching:
            knobs = knobs.model_copy(update={"enabled": False})
        mv.scaling = ScaleState(knobs, last_change=time.perf_counter())
        mv.batcher.on_demand = lambda: self._demand(mv)
        self._bounds(mv)
        if self._task is None and mv.scaling.knobs.enabled:
            self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def close(self) -> None:
        # drains go on: a worker being removed finishes its batches (pool.close leaves it be)
        for task in [self._task, *self._scaling.values()]:
            if task is not None:
                task.cancel()
        self._task = None

    def enabled(self, mv: ModelVersion) -> bool:
        return mv.scaling is not None and autoscaled(mv.scaling.knobs, mv.config.min_workers,
                                                     mv.config.max_workers)

    def _bounds(self, mv: ModelVersion) -> None:
        """Health counts the ready workers against minWorkers, not the scaled count: a
        worker being added does not make the model Loading."""
        mv.pool.min_ready = mv.config.min_workers if self.enabled(mv) else None

    def _demand(self, mv: ModelVersion) -> bool:
        """A request found no worker: True if one is coming (the request then waits)."""
        state = mv.scaling
        if state is None or not self.enabled(mv) or mv.pool.crash_looping \
                or time.perf_counter() - state.failed_at < state.knobs.cool_down_s:
            return False
        self._wake.set()
        return True

    async def _run(self) -> None:
        interval = self.settings.interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the others from serving
                log.exception("autoscaler look failed; continuing")

    async def tick(self) -> None:
        """One look at every version: scale-downs and from-zero starts at once, scale-ups
        through the budget."""
        now = time.perf_counter()
        claims: list[Claim] = []
        wanted: dict[str, tuple[ModelVersion, Decision]] = {}
        versions = {key(mv): mv for mv in self._versions() if mv.scaling is not None}
        for name, mv in versions.items():
            state, s = mv.scaling, sample(mv, now)
            assert state is not None
            self._bounds(mv)
            if state.target != mv.pool.target and mv not in self._scaling:
                state.target, state.last_change = mv.pool.target, now  # a scale call
            enabled = self.enabled(mv) and not self._locked(mv.name) and mv not in self._scaling
            if enabled:
                decision = decide(state, s)
            else:
                state.remember(s)
                decision = HOLD
            if decision.delta == 0:
                if decision.reason == "crash_loop":
                    self._refused(mv, decision, now)
            elif decision.delta < 0 or decision.reason == "demand":
                self._apply(mv, decision)
            else:
                wanted[name] = (mv, decision)
            use = state.mean_busy(now, USE_WINDOW_S) / s.lanes if s.lanes else 0.0
            claims.append(Claim(name, s.live, s.min_workers, s.max_workers, min(1.0, use),
                                state.active(now), name in wanted, enabled,
                                now - state.last_change))
        if any(mv.pool.workers and mv.pool.workers[0].device.startswith("cuda")
               for mv, _ in wanted.values()):
            claims = await self._gpu_rooms(claims, versions)
        for verdict in arbitrate(self.cores, claims):
            self._verdict(verdict, versions[verdict.key], wanted, now)
        self._share_threads(versions, [c.key for c in claims if c.active])

    def _share_threads(self, versions: dict[str, ModelVersion], busy: list[str]) -> None:
        """While several models are busy, their workers' threads are the cores shared among
        all of them (a compute-bound model on every core starved a frontend-bound one beside
        it: digits at 34 % of its solo throughput); one busy model alone, or an idle one,
        gets what its own pool size gives."""
        sharing = sum(versions[k].pool.target for k in busy) if len(busy) > 1 else 0
        for name, mv in versions.items():
            if mv not in self._scaling:
                mv.pool.retune(sharing if name in busy else 0)

    def _verdict(self, v: Verdict, mv: ModelVersion,
                 wanted: dict[str, tuple[ModelVersion, Decision]], now: float) -> None:
        if v.delta > 0:
            decision = wanted[v.key][1]
            self._apply(mv, Decision(1, decision.reason, f"{decision.detail}; {v.detail}"))
        elif v.delta < 0:
            self._apply(mv, Decision(-1, v.reason, v.detail))
        else:
            self._refused(mv, Decision(1, v.reason, v.detail), now)

    async def _gpu_rooms(self, claims: list[Claim],
                         versions: dict[str, ModelVersion]) -> list[Claim]:
        """Each CUDA model's room for one more worker on the device its next one gets."""
        stats = await asyncio.to_thread(gpu_stats)
        if not stats:
            return claims
        on_gpu = [w for mv in versions.values() for w in mv.pool.workers
                  if w.device.startswith("cuda")]
        per_worker = sum(used for _, _, used, _ in stats) / max(1, len(on_gpu))
        out = []
        for c in claims:
            pool = versions[c.key].pool
            if pool.workers and pool.workers[0].device.startswith("cuda"):
                _, _, used, total = stats[pool.next_index % len(stats)]
                c = replace(c, gpu_room=gpu_room(total - used, total, per_worker))
            out.append(c)
        return out

    def _refused(self, mv: ModelVersion, decision: Decision, now: float) -> None:
        state = mv.scaling
        assert state is not None
        state.record(mv.pool.target, mv.pool.target, decision, applied=False)
        if state.refused != decision.reason or now - state.refused_at > REFUSAL_LOG_S:
            state.refused, state.refused_at = decision.reason, now
            log.info("autoscale %s: stays at %d worker(s), up refused (%s): %s", key(mv),
                     mv.pool.target, decision.reason, decision.detail)

    def _apply(self, mv: ModelVersion, decision: Decision) -> None:
        if mv in self._scaling:
            return
        task = asyncio.create_task(self._scale(mv, decision), name=f"autoscale:{key(mv)}")
        self._scaling[mv] = task
        task.add_done_callback(lambda _: self._scaling.pop(mv, None))

    async def _scale(self, mv: ModelVersion, decision: Decision) -> None:
        """One worker more or fewer, within the bounds as they are now. A removed worker
        finishes its batches first (up to the model's response timeout) in the background:
        the pool may grow again meanwhile, its count no longer holds the draining one."""
        pool, cfg, state = mv.pool, mv.config, mv.scaling
        assert state is not None
        old = pool.target
        new = max(cfg.min_workers, min(cfg.max_workers, old + decision.delta))
        if new == old:
            return
        state.target, state.last_change, state.refused = new, time.perf_counter(), ""
        state.record(old, new, decision, applied=True)
        log.info("autoscale %s: %d -> %d worker(s), %s (%s): %s", key(mv), old, new,
                 "up" if new > old else "down", decision.reason, decision.detail)
        if new < old:
            drain = asyncio.create_task(self._drain(mv, new), name=f"drain:{key(mv)}")
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
            return
        try:
            await pool.scale(new)
        except Exception as exc:
            state.failed_at = time.perf_counter()
            log.error("autoscale %s: the new worker did not start (%s); no scale-up for %g s",
                      key(mv), exc, state.knobs.cool_down_s)
            state.target = old
            await pool.scale(old)
            mv.batcher.wake()  # requests waiting for it: 503 if no worker is left
            return
        state.settled_at = time.perf_counter()
        pool.retune()

    @staticmethod
    async def _drain(mv: ModelVersion, count: int) -> None:
        await mv.pool.scale(count, grace=mv.pool.spec.response_timeout)
        mv.pool.retune()  # its cores are free now
