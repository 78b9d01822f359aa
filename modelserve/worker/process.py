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


def die_with_parent() -> None:
    """Linux: the kernel kills this process if its parent dies, even by SIGKILL, so a worker
    busy in a long batch (not reading its socket) is never left an orphan."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def set_process_name(name: str) -> None:
    """Linux: the name ``top`` and ``ps -o comm`` show (15 bytes); a forked worker's command
    line is still the zygote's, so this is how operators tell them apart."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
