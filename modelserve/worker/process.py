"""Process setup shared by a worker and the zygote that forks workers: threads, parent
death, name."""

from __future__ import annotations

import os
import signal
import sys

SPIN_COUNT = 1000  # libgomp's spin rounds before an idle OpenMP thread sleeps (see below)


def preset_thread_env(threads: int) -> None:
    """workers x threads ~= cores: oversubscription is the main CPU-serving slowdown.

    The variables are read when torch/onnxruntime/numpy load, so this runs before they are
    imported; a worker forked from the zygote (which loaded them) sets torch's count itself.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Idle OpenMP threads otherwise spin for milliseconds after each op (libgomp's default),
    # burning the CPU the frontend needs (measured: 0.70 -> 0.20 ms of worker CPU per digits
    # request). A thread that sleeps at once is slow to wake for the next op, though: a short
    # spin (1,000 rounds, ~25 us here) takes resnet at batch 1 on two threads from 12.3 to
    # 9.0 ms. Only a model with work for a team runs on several threads (lanes.Gate.wide), so
    # small models never spin. Either variable set by the user wins.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _prctl(option: int, arg: int | bytes) -> bool:
    """Linux ``prctl(2)``; False where there is none (other systems)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        ctypes.CDLL(None).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return True


def die_with_parent() -> None:
    """Linux: the kernel kills this process if its parent dies, even by SIGKILL, so a worker
    busy in a long batch (not reading its socket) is never left an orphan.

    A parent that died before prctl took effect shows as a changed parent pid. Not as pid 1:
    in a container the server itself is pid 1 (a parent that died even earlier closed the
    socket, which ends the zygote and the worker)."""
    parent = os.getppid()
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != parent:
        os._exit(1)


def set_process_name(name: str) -> None:
    """Linux: the name ``top`` and ``ps -o comm`` show (15 bytes); a forked worker's command
    line is still the zygote's, so this is how operators tell them apart."""
    _prctl(PR_SET_NAME, name.encode()[:15] + b"\0")
