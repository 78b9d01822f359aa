"""GPU utilisation and memory, read with ``nvidia-smi`` when the host has it (cached briefly,
so a scrape never waits on it twice in a row)."""

from __future__ import annotations

import shutil
import subprocess
import time

CACHE_S = 5.0
_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
_cache: tuple[float, list[tuple[str, float, float, float]]] = (0.0, [])


def gpu_stats() -> list[tuple[str, float, float, float]]:
    """``(device id, utilisation %, memory used MiB, memory total MiB)`` per GPU; [] if none."""
    global _cache
    now = time.monotonic()
    if now - _cache[0] < CACHE_S:
        return _cache[1]
    stats: list[tuple[str, float, float, float]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, _QUERY, "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=2).stdout
            for line in out.strip().splitlines():
                index, util, used, total = (part.strip() for part in line.split(","))
                stats.append((index, float(util), float(used), float(total)))
        except (OSError, subprocess.TimeoutExpired, ValueError):
            stats = []
    _cache = (now, stats)
    return stats
