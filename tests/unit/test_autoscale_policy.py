"""The autoscaling policy and the core budget, fed made-up load (no processes, no clock):
scale-up on waiting, hysteresis, cool-down, scale to and from zero, crash loops, and how the
cores are shared between models."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import SimpleNamespace

import pytest

from modelserve.autoscale_config import AutoscaleSettings, ModelAutoscale
from modelserve.config import ModelConfig, Settings
from modelserve.server.engine.autoscale import Autoscaler, sample
from modelserve.server.engine.scaling_budget import Claim, arbitrate, gpu_room, shares
from modelserve.server.engine.scaling_policy import Sample, ScaleState, autoscaled, decide

KNOBS = AutoscaleSettings(scale_up_after_ms=100, cool_down_s=10, interval_ms=200)
STEP = 0.2


def look(now: float, *, live: int = 1, lanes: int | None = None, busy: float = 0.0,
         queued: int = 0, wait_s: float = 0.0, lo: int = 1, hi: int = 4, ready: int | None = None,
         unhealthy: bool = False) -> Sample:
    return Sample(now, live, live if ready is None else ready, live if lanes is None else lanes,
                  busy, queued, wait_s, lo, hi, unhealthy)


def run(state: ScaleState, start: float, seconds: float, **kw) -> list[tuple[float, int, str]]:
    """Looks every STEP for ``seconds`` with the same load; the decisions that were not holds
    (each taken as the autoscaler takes it: the count changed then)."""
    out = []
    steps = round(seconds / STEP)
    for i in range(steps):
        now = start + i * STEP
        d = decide(state, look(now, **kw))
        if d.delta:
            state.last_change = now
            out.append((now, d.delta, d.reason))
    return out


def fresh(**knobs) -> ScaleState:
    return ScaleState(KNOBS.model_copy(update=knobs), last_change=0.0)


# -- scale-up -------------------------------------------------------------------------------
def test_requests_waiting_for_busy_workers_add_one():
    state = fresh()
    d = decide(state, look(5.0, busy=1, queued=12, wait_s=0.3))
    assert (d.delta, d.reason) == (1, "wait")
    assert "300 ms" in d.detail


def test_short_waits_or_idle_lanes_add_none():
    state = fresh()
    # short waits under the threshold, and the queue drains between them
    decisions = [decide(state, look(5.0 + i * STEP, busy=1, queued=i % 2, wait_s=0.05 * (i % 2)))
                 for i in range(15)]
    assert [d.delta for d in decisions] == [0] * 15
    state = fresh()
    # requests wait, but the lanes are mostly idle: not for busy workers
    assert run(state, 5.0, 3, busy=0.2, queued=3, wait_s=0.5) == []


def test_a_queue_that_never_drains_adds_one_though_no_wait_reaches_the_threshold():
    """32 clients on a model whose batches take 25 ms: each request waits ~60 ms, never 100,
    but requests are queued behind the busy lane at every look: a second worker doubles it."""
    state = fresh()
    for i in range(15):
        d = decide(state, look(5.0 + i * STEP, busy=1, queued=16, wait_s=0.06))
        if d.delta:
            break
    assert (d.delta, d.reason) == (1, "wait")
    assert i * STEP <= 1.0 + STEP  # once the looks cover a second
    assert "queued behind busy workers" in d.detail


def test_never_above_max_workers():
    state = fresh()
    assert run(state, 5.0, 3, live=4, busy=4, queued=30, wait_s=1.0) == []


def test_waits_while_a_worker_starts_and_settles():
    state = fresh()
    assert decide(state, look(5.0, live=2, ready=1, lanes=1, busy=1, queued=9,
                              wait_s=0.5)).delta == 0
    # it came up: the next one only once it had a moment to take the queue
    assert decide(state, look(5.2, live=2, busy=2, queued=9, wait_s=0.5)).delta == 0
    assert decide(state, look(6.3, live=2, busy=2, queued=9, wait_s=0.5)).delta == 1


def test_crash_looping_model_does_not_scale_up():
    state = fresh()
    d = decide(state, look(5.0, busy=1, queued=9, wait_s=0.5, unhealthy=True))
    assert (d.delta, d.reason) == (0, "crash_loop")
    state = fresh()
    state.failed_at = 4.0  # a scale-up whose worker failed to start, within the cool-down
    assert decide(state, look(5.0, busy=1, queued=9, wait_s=0.5)).delta == 0
    assert decide(state, look(15.0, busy=1, queued=9, wait_s=0.5)).delta == 1


# -- scale-down -----------------------------------------------------------------------------
def test_low_use_removes_one_after_the_cool_down():
    state = fresh()
    out = run(state, 0.0, 12, live=3, busy=0.4)
    assert [delta for _, delta, _ in out] == [-1]
    when, _, reason = out[0]
    assert reason == "low_use" and when >= 10  # not before the cool-down


def test_idle_pool_says_idle_and_never_goes_below_min():
    state = fresh()
    assert run(state, 0.0, 12, live=2)[0][2] == "idle"
    state = fresh()
    assert run(state, 0.0, 30, live=1) == []  # at minWorkers 1


def test_cool_down_counts_from_the_last_change():
    state = fresh()
    state.last_change = 8.0
    assert run(state, 0.0, 17.8, live=2) == []
    assert run(state, 17.8, 1.0, live=2)[0][1] == -1


def test_any_wait_in_the_window_holds_the_workers():
    state = fresh()
    run(state, 0.0, 5, live=3, busy=0.2)
    decide(state, look(5.0, live=3, busy=0.2, queued=5, wait_s=0.2))
    assert run(state, 5.2, 9.6, live=3, busy=0.2) == []  # the wait is still in the window
    assert run(state, 14.8, 1.0, live=3, busy=0.2) != []


def test_steady_load_between_the_levels_does_not_oscillate():
    """Busy enough that one worker fewer would be over low_use, not busy enough to queue
    for: held for minutes, whichever count it started at."""
    for live, busy in ((2, 1.2), (3, 1.8)):
        state = fresh()
        assert run(state, 0.0, 120, live=live, busy=busy, queued=1, wait_s=0.02) == []


def test_scale_up_needs_busier_lanes_than_scale_down_allows():
    """A load that would just pass the scale-down level is far from the scale-up level."""
    state = fresh()
    lanes_after_down = 2
    busy = KNOBS.low_use * lanes_after_down  # the most a scale-down from 3 leaves
    assert run(state, 0.0, 30, live=2, busy=busy, queued=4, wait_s=0.5) == []


# -- zero -----------------------------------------------------------------------------------
def test_scale_to_zero_only_after_a_quiet_cool_down():
    state = fresh()
    out = run(state, 0.0, 12, live=1, lo=0, hi=1)
    assert [(delta, reason) for _, delta, reason in out] == [(-1, "idle")]
    state = fresh()
    run(state, 0.0, 6, live=1, lo=0, hi=1)
    decide(state, look(6.0, live=1, busy=1, lo=0, hi=1))  # one request
    assert run(state, 6.2, 9, live=1, lo=0, hi=1) == []


def test_a_request_wakes_a_model_at_zero():
    state = fresh()
    assert decide(state, look(1.0, live=0, lo=0, hi=2)).delta == 0
    d = decide(state, look(1.2, live=0, queued=1, wait_s=0.0, lo=0, hi=2))
    assert (d.delta, d.reason) == (1, "demand")
    state.failed_at = 1.5  # its worker did not start: the next request is not a new try
    assert decide(state, look(2.0, live=0, queued=1, lo=0, hi=2)).reason == "crash_loop"


def test_below_min_is_left_to_the_pool():
    assert decide(fresh(), look(5.0, live=0, queued=5, wait_s=2.0, lo=1)).delta == 0


# -- the budget -----------------------------------------------------------------------------
def claim(key: str, live: int, *, use: float = 1.0, active: bool = True, wants: bool = False,
          lo: int = 1, hi: int = 4, scalable: bool = True, changed_s: float = 60.0,
          gpu: bool | None = None) -> Claim:
    return Claim(key, live, lo, hi, use, active, wants, scalable, changed_s, gpu)


def verdicts(cores: int, *claims: Claim) -> dict[str, tuple[int, str]]:
    return {v.key: (v.delta, v.reason) for v in arbitrate(cores, list(claims))}


def test_a_free_core_is_granted_and_a_spent_budget_refuses():
    assert verdicts(2, claim("a", 1, wants=True)) == {"a": (1, "wait")}
    assert verdicts(2, claim("a", 2, wants=True)) == {"a": (0, "budget")}


def test_idle_models_hold_no_core():
    """digits idle beside resnet: resnet may use both cores."""
    got = verdicts(2, claim("resnet", 1, wants=True),
                   claim("digits", 1, active=False, use=0.0, scalable=False, hi=1))
    assert got == {"resnet": (1, "wait")}


def test_busy_fixed_model_keeps_its_core():
    got = verdicts(2, claim("resnet", 1, wants=True), claim("digits", 1, scalable=False, hi=1))
    assert got == {"resnet": (0, "budget")}


def test_model_over_its_share_gives_one_to_a_model_under_it():
    got = verdicts(4, claim("a", 3, use=0.9), claim("b", 1, use=1.0, wants=True))
    assert got == {"a": (-1, "budget"), "b": (1, "wait")}


def test_share_does_not_flip_between_equals():
    """3 cores, two saturated models: the odd core stays with the one holding it."""
    assert verdicts(3, claim("a", 2, wants=True), claim("b", 1, wants=True)) == {
        "a": (0, "budget"), "b": (0, "budget")}
    assert shares(3, [claim("a", 1, wants=True), claim("b", 2, wants=True, use=0.5)]) == {
        "a": 1, "b": 2}


def test_busier_model_wins_the_last_core():
    got = verdicts(3, claim("a", 1, wants=True, use=0.8), claim("b", 1, wants=True, use=1.0))
    assert got == {"b": (1, "wait"), "a": (0, "budget")}


def test_a_fresh_change_is_not_undone_at_once():
    got = verdicts(4, claim("a", 3, use=0.9, changed_s=1.0), claim("b", 1, wants=True))
    assert got == {"b": (0, "budget")}


def test_over_committed_cores_go_back_without_a_request():
    """A fixed model got busy while another held every core: the other gives back."""
    got = verdicts(2, claim("a", 2), claim("fixed", 1, scalable=False, hi=1))
    assert got == {"a": (-1, "budget")}


def test_min_workers_are_never_taken():
    got = verdicts(2, claim("a", 1, wants=True, lo=1), claim("b", 2, lo=2, use=0.1))
    assert got == {"a": (0, "budget")}


def test_gpu_memory_refuses_and_an_idle_gpu_model_goes_first():
    got = verdicts(8, claim("a", 1, wants=True, gpu=False),
                   claim("idle", 2, active=False, use=0.0, gpu=True))
    assert got == {"a": (0, "budget"), "idle": (-1, "budget")}
    assert gpu_room(free_mb=30_000, total_mb=80_000, per_worker_mb=10_000)
    assert not gpu_room(free_mb=12_000, total_mb=80_000, per_worker_mb=10_000)


# -- settings -------------------------------------------------------------------------------
def test_on_by_default_where_max_exceeds_min():
    assert autoscaled(AutoscaleSettings(), 1, 4)
    assert not autoscaled(AutoscaleSettings(), 2, 2)
    assert not autoscaled(AutoscaleSettings(enabled=False), 1, 4)


def test_model_config_autoscale_over_the_server():
    settings = Settings(autoscale={"cool_down_s": 5, "scale_up_after_ms": 250})
    cfg = ModelConfig.resolve(settings, {"minWorkers": 0, "maxWorkers": 2,
                                         "autoscale": {"cool_down_s": 1}}, {})
    knobs = settings.autoscale.merged(cfg.autoscale)
    assert (knobs.cool_down_s, knobs.scale_up_after_ms, knobs.enabled) == (1, 250, True)
    off = ModelConfig.resolve(settings, {"autoscale": {"enabled": False}}, {})
    assert not settings.autoscale.merged(off.autoscale).enabled
    with pytest.raises(ValueError, match="cool_down"):
        ModelConfig.resolve(settings, {"autoscale": {"cool_down": 1}}, {})
    assert ModelAutoscale().model_dump(exclude_none=True) == {}


# -- what the autoscaler reads off a pool ---------------------------------------------------
def fake_version(workers: list, pending: list, crashed_at: float = 0.0, lo: int = 1,
                 hi: int = 4) -> SimpleNamespace:
    pool = SimpleNamespace(workers=workers, crash_looping=False, last_crash=crashed_at,
                           next_index=len(workers))
    return SimpleNamespace(name="m", version="1.0", pool=pool,
                           batcher=SimpleNamespace(pending=deque(pending)),
                           config=SimpleNamespace(min_workers=lo, max_workers=hi))


def job(arrival: float) -> SimpleNamespace:
    return SimpleNamespace(arrival=arrival)


def worker(status: str = "READY", lanes: int = 1, batches: tuple = (),
           device: str = "cpu") -> SimpleNamespace:
    return SimpleNamespace(status=status, batch_threads=lanes, device=device,
                           inflight={i: list(b) for i, b in enumerate(batches)})


def test_sample_counts_what_waits_behind_busy_lanes():
    mv = fake_version([worker(lanes=2, batches=([job(9.0)], [job(9.5)], [job(8.0), job(9.9)])),
                       worker(status="STARTING"), worker(status="UNLOADING", batches=([job(1)],))],
                      pending=[job(7.5), job(9.8)])
    s = sample(mv, 10.0)
    assert (s.live, s.ready, s.lanes, s.busy) == (2, 1, 2, 2)
    assert s.queued == 4  # the third batch (2) behind the two running, and 2 in the queue
    assert s.wait_s == pytest.approx(2.5)  # the oldest: arrived at 7.5
    assert not s.unhealthy
    quiet = sample(fake_version([worker(batches=([job(9.0)],))], []), 10.0)
    assert (quiet.busy, quiet.queued, quiet.wait_s) == (1, 0, 0.0)
    assert sample(fake_version([worker()], [], crashed_at=time.time() - 5), 10.0).unhealthy


def test_gpu_room_is_read_for_the_device_the_next_worker_gets(monkeypatch):
    import modelserve.server.engine.autoscale as autoscale

    full, roomy = ("0", 90.0, 70_000.0, 80_000.0), ("1", 10.0, 10_000.0, 80_000.0)
    monkeypatch.setattr(autoscale, "gpu_stats", lambda: [full, roomy])
    gpu = fake_version([worker(device="cuda:0"), worker(device="cuda:1")], [])
    cpu = fake_version([worker()], [])
    scaler = Autoscaler(AutoscaleSettings(), lambda: [], lambda name: False)
    claims = [claim("gpu", 2, wants=True), claim("cpu", 1, wants=True)]
    got = asyncio.run(scaler._gpu_rooms(claims, {"gpu": gpu, "cpu": cpu}))
    assert [c.gpu_room for c in got] == [False, None]  # worker 2 goes on cuda:0, full
    gpu.pool.next_index = 3  # cuda:1: 70 GB free, workers take 40 GB each on average
    got = asyncio.run(scaler._gpu_rooms(claims, {"gpu": gpu, "cpu": cpu}))
    assert got[0].gpu_room is True


@pytest.mark.parametrize(("keys", "scaled"), [
    ({}, True),
    ({"continuousBatching": True}, False),  # its running requests' state is in the worker
    ({"sequenceBatching": True, "sequenceMaxIdleMSec": 1000}, False),  # a sequence's too
    ({"sequenceBatching": True}, True),  # no idle time: no sequences, TorchServe's rule
])
def test_models_whose_state_lives_in_their_workers_are_not_autoscaled(keys, scaled):
    from modelserve.model_config import ModelConfig

    async def attach() -> SimpleNamespace:
        scaler = Autoscaler(AutoscaleSettings(), lambda: [], lambda name: False)
        mv = fake_version([worker()], [])
        mv.config = ModelConfig.model_validate({"minWorkers": 1, "maxWorkers": 3, **keys})
        mv.batcher.on_demand = None
        mv.scaling = None
        scaler.attach(mv)
        await scaler.close()
        return mv

    mv = asyncio.run(attach())
    assert mv.scaling.knobs.enabled is scaled
