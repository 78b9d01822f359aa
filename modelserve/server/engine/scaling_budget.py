"""The cores (and, with CUDA, device memory) that every model's workers share.

A worker holds a core (at least one thread; a pool's threads are the cores shared among its
workers), but only while its model is busy: an idle model's workers use no CPU, so they claim
none, and its extra workers go when its own cool-down says so. Among the busy models the
cores are shared fairly: each keeps at least its minWorkers, the rest go one at a time to the
model holding fewest that wants more (what does not divide evenly stays where it is, else
goes to the busier). A model that wants a worker gets it from a free core, else from a model
holding more than its share, which gives one back (drained first). With CUDA a worker is
added only where its device has room for one; when it has not, an idle model's extra worker
goes first. Pure functions: the autoscaler (``engine/autoscale.py``) feeds them its claims.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLD_S = 5.0  # a model whose worker count changed this recently is not asked to give one back


@dataclass(frozen=True)
class Claim:
    """One model version, as the budget sees it."""

    key: str
    live: int  # workers starting or ready
    min_workers: int
    max_workers: int
    use: float  # share of its open lanes busy lately, 0..1 (ties: the busier wins)
    active: bool  # busy lately: its workers hold cores
    wants: bool  # its policy asks for one more worker
    scalable: bool  # autoscaled (a fixed pool neither grows nor gives back)
    changed_s: float = float("inf")  # seconds since its worker count last changed
    gpu_room: bool | None = None  # CUDA: room for one more worker on its next device


@dataclass(frozen=True)
class Verdict:
    key: str
    delta: int  # +1: granted; -1: give one back; 0: refused
    reason: str
    detail: str


def shares(cores: int, claims: list[Claim]) -> dict[str, int]:
    """Each busy claim's fair share of ``cores``: its minWorkers (at least 1; a fixed pool
    its size), then one core at a time to the claim holding fewest whose demand (its workers,
    one more if it wants it, at most maxWorkers) is not met; ties go to the one already
    holding more than that (so a share does not flip between equals), then the busier."""
    alloc = {c.key: max(c.min_workers, 1) if c.scalable else c.live for c in claims}
    demand = {c.key: min(c.max_workers, c.live + c.wants) if c.scalable else c.live
              for c in claims}
    left = cores - sum(alloc.values())
    while left > 0:
        hungry = [c for c in claims if alloc[c.key] < demand[c.key]]
        if not hungry:
            break
        pick = min(hungry, key=lambda c: (alloc[c.key], c.live <= alloc[c.key], -c.use, c.key))
        alloc[pick.key] += 1
        left -= 1
    return alloc


def arbitrate(cores: int, claims: list[Claim]) -> list[Verdict]:
    """Grant or refuse each wanted worker; name the models that give one back."""
    busy = [c for c in claims if c.active or c.wants]
    alloc = shares(cores, busy)
    free = cores - sum(c.live for c in busy)
    verdicts: list[Verdict] = []
    giving: set[str] = set()

    def donor(candidates: list[Claim]) -> Claim | None:
        ok = [d for d in candidates if d.scalable and d.key not in giving
              and d.live > d.min_workers and d.changed_s >= HOLD_S]
        return min(ok, key=lambda d: (d.use, -d.live, d.key)) if ok else None

    wanting = sorted((c for c in busy if c.wants),
                     key=lambda c: (c.live - alloc[c.key], -c.use, c.key))
    for c in wanting:
        if c.gpu_room is False:
            idle = donor([d for d in claims if d.gpu_room is not None and not d.active
                          and not d.wants])
            if idle is not None:
                giving.add(idle.key)
                verdicts.append(Verdict(idle.key, -1, "budget", f"idle: GPU memory for {c.key}"))
            verdicts.append(Verdict(c.key, 0, "budget", "no GPU memory free for another worker"))
            continue
        if c.live >= alloc[c.key]:
            verdicts.append(Verdict(c.key, 0, "budget", _spent(cores, busy, alloc[c.key])))
            continue
        if free >= 1:
            free -= 1
            verdicts.append(Verdict(c.key, 1, "wait", f"a core is free ({cores} cores)"))
            continue
        d = donor([d for d in busy if d.live > alloc[d.key]])
        if d is None:
            verdicts.append(Verdict(c.key, 0, "budget", _spent(cores, busy, alloc[c.key])))
            continue
        giving.add(d.key)
        verdicts.append(Verdict(d.key, -1, "budget", f"its fair share of {cores} cores is "
                                f"{alloc[d.key]} worker(s): one goes to {c.key}"))
        verdicts.append(Verdict(c.key, 1, "wait", f"a core from {d.key}"))
    # over the budget with nobody wanting (a fixed pool got busy): the extra workers go back
    if free < 0:
        for d in sorted(busy, key=lambda d: (d.use, d.key)):
            if free >= 0:
                break
            if d.live > alloc[d.key] and donor([d]) is not None:
                giving.add(d.key)
                free += 1
                verdicts.append(Verdict(d.key, -1, "budget", f"{cores} cores are over-committed; "
                                        f"its fair share is {alloc[d.key]} worker(s)"))
    return verdicts


def _spent(cores: int, busy: list[Claim], share: int) -> str:
    held = sum(c.live for c in busy)
    return (f"no core free: busy models' workers hold {held} of {cores} cores, its fair "
            f"share is {share}")


def gpu_room(free_mb: float, total_mb: float, per_worker_mb: float) -> bool:
    """Whether a device has room for a worker that takes about ``per_worker_mb`` (the mean
    of those on it), keeping a tenth of the device spare for the workers' own growth."""
    return free_mb - per_worker_mb >= 0.1 * total_mb
