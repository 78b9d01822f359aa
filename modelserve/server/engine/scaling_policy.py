"""When one model version should get another worker, or one fewer.

A pure function of what the autoscaler (``engine/autoscale.py``) saw at each look, so that
tests feed it made-up load. The signals are the frontend's own: requests waiting for a busy
worker (the batcher's queue, and batches queued in a worker behind its busy lanes) and how
long the oldest has waited, and the batch lanes busy now out of those open.

- **Up** when the oldest waiting request has waited ``scale_up_after_ms``, or requests were
  queued at every look for a second (the queue never drained), and the lanes were busy
  (``HIGH_USE``, over the last second): requests wait for workers that are all busy. Not
  while a worker is starting, for a moment after one started (its effect is not seen yet),
  or while the model crash-loops or a start failed within the cool-down.
- **Down** after ``cool_down_s`` of low use since the last change: no request waited past
  the threshold, and the lanes' mean use would keep one worker fewer at most ``low_use`` busy.
  Never below minWorkers; to zero (minWorkers 0) only after a cool-down with no request.
- **From zero**: a request waiting and no worker: one at once.

Hysteresis: a pool grows only while its lanes are ``HIGH_USE`` busy, and shrinks only when
its load fits one worker fewer at ``low_use``; between the two, steady load holds it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from modelserve.autoscale_config import AutoscaleSettings

HIGH_USE = 0.75  # share of the open lanes busy (mean over USE_WINDOW_S) for a scale-up
USE_WINDOW_S = 1.0
ACTIVE_USE = 0.05  # mean busy lanes over ACTIVE_WINDOW_S above which a model holds cores
ACTIVE_WINDOW_S = 2.0
SETTLE_MIN_S = 1.0  # after a worker came up, at least this long before the next scale-up


@dataclass(frozen=True)
class Sample:
    """One look at a version's pool and queue."""

    now: float  # seconds, on the clock of the requests' arrival times (perf_counter)
    live: int  # workers starting or ready
    ready: int
    lanes: int  # batch lanes open in the ready workers
    busy: float  # lanes running a batch now
    queued: int  # requests waiting for a worker: the batcher's, and batches behind busy lanes
    wait_s: float  # how long the oldest of them has waited (0: none waits)
    min_workers: int
    max_workers: int
    unhealthy: bool = False  # crash-looping, or a worker died lately


@dataclass(frozen=True)
class Decision:
    delta: int  # +1: one more worker; -1: one fewer; 0: hold
    reason: str  # a short label (the metric's): wait, demand, low_use, idle, budget, ...
    detail: str = ""  # the numbers, in words (log, describe)


HOLD = Decision(0, "hold")


def autoscaled(knobs: AutoscaleSettings, min_workers: int, max_workers: int) -> bool:
    """Whether a version scales itself: on, and room between its bounds."""
    return knobs.enabled and max_workers > min_workers


@dataclass
class ScaleState:
    """One version's autoscaling memory: recent looks, its last change and decision."""

    knobs: AutoscaleSettings
    # (when, busy lanes, a request waited past the threshold, any request queued or running,
    # any request queued behind busy lanes)
    looks: deque[tuple[float, float, bool, bool, bool]] = field(default_factory=deque)
    last_change: float = float("-inf")  # when its worker count last changed
    settled_at: float = float("-inf")  # when a starting worker was last seen
    failed_at: float = float("-inf")  # a scale-up whose worker did not start
    target: int | None = None  # the pool's target as the autoscaler last saw or set it
    last: dict[str, Any] | None = None  # the last change or refusal (describe)
    changed: dict[str, Any] | None = None  # the last change
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (direction, reason)
    refused: str = ""  # the refusal last logged, and when (logged again when it changes)
    refused_at: float = float("-inf")

    def remember(self, s: Sample) -> None:
        threshold = self.knobs.scale_up_after_ms / 1000
        self.looks.append((s.now, s.busy, s.wait_s >= threshold, s.queued > 0 or s.busy > 0,
                           s.queued > 0))
        horizon = s.now - max(self.knobs.cool_down_s, ACTIVE_WINDOW_S, USE_WINDOW_S) - 1.0
        while self.looks and self.looks[0][0] < horizon:
            self.looks.popleft()
        if s.ready < s.live:
            self.settled_at = s.now

    def window(self, now: float, seconds: float) -> list[tuple[float, float, bool, bool, bool]]:
        return [look for look in self.looks if look[0] >= now - seconds]

    def mean_busy(self, now: float, seconds: float) -> float:
        looks = self.window(now, seconds)
        return sum(look[1] for look in looks) / len(looks) if looks else 0.0

    def active(self, now: float) -> bool:
        """Busy lately: its workers use cores (an idle model's workers claim none)."""
        looks = self.window(now, ACTIVE_WINDOW_S)
        return bool(looks) and (looks[-1][3] or self.mean_busy(now, ACTIVE_WINDOW_S) > ACTIVE_USE)

    def covers(self, now: float, seconds: float) -> bool:
        """Whether the looks reach back ``seconds`` (a cool-down needs its whole window)."""
        slack = self.knobs.interval_ms / 1000
        return bool(self.looks) and self.looks[0][0] <= now - seconds + slack

    def record(self, old: int, new: int, decision: Decision, applied: bool) -> None:
        """A change (``applied``) or a refusal, for describe, the counter and the log."""
        direction = "up" if decision.delta > 0 else "down"
        self.last = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "from": old, "to": new if applied else old,
                     "direction": direction if applied else f"{direction} refused",
                     "reason": decision.reason, "detail": decision.detail}
        if applied:
            self.changed = self.last
            self.events[(direction, decision.reason)] += 1


def decide(state: ScaleState, s: Sample) -> Decision:
    """What this look says: one more worker, one fewer, or hold (remembering the look)."""
    state.remember(s)
    if s.live < s.min_workers:
        return HOLD  # the pool is bringing back its minimum itself
    if s.live == 0:
        if not s.queued:
            return HOLD
        if s.unhealthy or s.now - state.failed_at < state.knobs.cool_down_s:
            return Decision(0, "crash_loop", "requests wait, but its workers fail to start")
        return Decision(1, "demand", f"{s.queued} request(s) waiting and no worker")
    return _up(state, s) or _down(state, s)


def _up(state: ScaleState, s: Sample) -> Decision | None:
    knobs = state.knobs
    # a request waited past the threshold, or requests queued behind busy lanes at every look
    # for USE_WINDOW_S (the queue never drained: a model whose batches take 25 ms keeps 32
    # clients' requests waiting ~60 ms, never 100, yet a second worker doubles it)
    backlog = state.covers(s.now, USE_WINDOW_S) and all(
        look[4] for look in state.window(s.now, USE_WINDOW_S))
    if (s.wait_s * 1000 < knobs.scale_up_after_ms and not backlog) or s.live >= s.max_workers:
        return None
    busy = state.mean_busy(s.now, USE_WINDOW_S)
    if s.lanes == 0 or busy < HIGH_USE * s.lanes:
        return None  # requests wait, but not for busy workers (a starting one, the frontend)
    if s.unhealthy or s.now - state.failed_at < knobs.cool_down_s:
        return Decision(0, "crash_loop", "requests wait, but its workers crash or fail to "
                        "start: no more of them")
    settle = max(SETTLE_MIN_S, 2 * knobs.scale_up_after_ms / 1000)
    if s.ready < s.live or s.now - state.settled_at < settle:
        return HOLD  # one is starting, or just started: see what it does first
    why = (f"requests waited {s.wait_s * 1000:.0f} ms for a busy worker (over "
           f"{knobs.scale_up_after_ms:g} ms)" if s.wait_s * 1000 >= knobs.scale_up_after_ms
           else f"requests queued behind busy workers for {USE_WINDOW_S:g} s")
    return Decision(1, "wait", f"{why}, {busy:.1f} of {s.lanes} lane(s) busy, "
                    f"{s.queued} waiting")


def _down(state: ScaleState, s: Sample) -> Decision:
    knobs = state.knobs
    cool = knobs.cool_down_s
    if s.live <= s.min_workers or s.now - state.last_change < cool or not state.covers(s.now, cool):
        return HOLD
    looks = state.window(s.now, cool)
    if any(look[2] for look in looks):
        return HOLD
    busy = sum(look[1] for look in looks) / len(looks)
    if s.live == 1:  # to zero: not one request in the whole cool-down
        if any(look[3] for look in looks):
            return HOLD
        return Decision(-1, "idle", f"no request for {cool:g} s")
    if busy > knobs.low_use * (s.live - 1):
        return HOLD
    if not any(look[3] for look in looks):
        return Decision(-1, "idle", f"no request for {cool:g} s")
    return Decision(-1, "low_use", f"{busy:.2f} lane(s) busy on average over {cool:g} s: "
                    f"{s.live - 1} worker(s) would be at most {knobs.low_use:.0%} busy")
