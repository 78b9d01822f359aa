"""Time spent inside model calls, per thread.

Torch and onnxruntime release the GIL while a model runs; the Python around it (decoding,
the handler's own steps, encoding) holds it. So the share of a batch's time spent here says
whether a worker gains from running batches on several threads at once
(``modelserve.worker.lanes``). The built-in handlers time their model calls with
:func:`timing`; the worker reads and resets the clock once per batch with :func:`take`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def timing() -> Iterator[None]:
    """Add the time of the block to this thread's clock."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _local.seconds = getattr(_local, "seconds", 0.0) + time.perf_counter() - start


@contextmanager
def timing_unless_timed() -> Iterator[None]:
    """Add the time of the block to this thread's clock unless a model call inside it was
    timed already: a TorchServe handler's own ``inference`` that calls ``self.model``
    directly counts as the model call it is."""
    before = getattr(_local, "seconds", 0.0)
    start = time.perf_counter()
    try:
        yield
    finally:
        if getattr(_local, "seconds", 0.0) == before:
            _local.seconds = before + time.perf_counter() - start


def take() -> float:
    """Seconds in model calls on this thread since the last take."""
    seconds = getattr(_local, "seconds", 0.0)
    _local.seconds = 0.0
    return seconds
