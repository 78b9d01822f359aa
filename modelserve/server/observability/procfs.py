"""Per-process memory and CPU time, and the host's CPU and memory, from /proc (Linux); zero
where unavailable."""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time the process has used."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


def host_cpu_times() -> tuple[int, int]:
    """The host's (busy, total) CPU time since boot, in clock ticks (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = sum(ticks[3:5])  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user and nice
    return total - idle, total


def host_memory() -> tuple[int, int, int]:
    """The host's (total, available, used) memory in bytes (/proc/meminfo), "used" as
    psutil counts it: total less free, buffers and page cache."""
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0, 0
    total = info.get("MemTotal", 0)
    cache = info.get("Cached", 0) + info.get("SReclaimable", 0) + info.get("Buffers", 0)
    used = total - info.get("MemFree", 0) - cache
    return total, info.get("MemAvailable", 0), used if used >= 0 else total - info.get(
        "MemFree", 0)
