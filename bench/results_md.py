"""Append a run's tables to bench/RESULTS.md (``--record``): the date, the machine, the exact
command and the raw table, so that every number in the record can be made again.

Only a run meant for the record should pass ``--record``: one on a quiet machine. A smoke run
on a shared machine prints its table and leaves the file alone.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """Cores this process may use, memory, Python: what the numbers depend on."""
    cores = len(os.sched_getaffinity(0))
    try:
        kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "? GiB"
    return f"{cores} cores, {memory}, Python {platform.python_version()}, {platform.machine()}"


def command_line() -> str:
    return shlex.join([".venv/bin/python", *sys.argv])


def record(title: str, tables: list[str], notes: str = "", path: Path = RESULTS) -> None:
    """One ``## date — title`` section at the end of ``path``."""
    today = datetime.date.today().isoformat()
    parts = [f"\n## {today} — {title}\n", f"Machine: {machine()}.\n",
             f"Command:\n\n```sh\n{command_line()}\n```\n"]
    if notes:
        parts.append(notes.rstrip() + "\n")
    parts += [f"```\n{table.rstrip()}\n```\n" for table in tables]
    with path.open("a") as f:
        f.write("\n".join(parts))
    print(f"recorded in {path}")
