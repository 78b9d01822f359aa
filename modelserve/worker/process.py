"""Process setup shared by a worker and the zygote that forks workers: threads, parent
death, name."""

from __future__ import annotations

import os
import signal
import sys


def preset_thread_env(threads: int) -> None:
    """workers x threads ~= cores: oversubscription is the main CPU-serving slowdown.

    The variables are read when torch/onnxruntime/numpy load, so this runs before they are
    imported; a worker forked from the zygote (which loaded them) sets torch's count itself.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Idle OpenMP threads otherwise spin for a while after each op, burning the CPU the
    # frontend needs (measured: 0.70 -> 0.20 ms of worker CPU per digits request).
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
