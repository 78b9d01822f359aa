"""The tables of ``ts_dropin.py``: medians and ratios to TorchServe per model and concurrency,
issue 19's goals, and the section ``--record`` appends to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def table(rows: list[dict], servers: list[str]) -> str:
    """Medians per server, model and concurrency, each round's req/s, and the ratios to
    TorchServe (of the medians, and per round: the servers ran side by side in a round)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["c"], r["server"]), []).append(r)
    lines = [f"{'model':10} {'c':>3} {'server':24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'err':>4} {'CPU ms':>7} {'other':>5}  {'x req/s':>7} {'x p50':>6} {'x p99':>6}"
             "  rounds (req/s; x req/s)"]
    keys = sorted({(r["model"], r["c"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, c in keys:
        base = groups.get((model, c, "torchserve"))
        for name in servers:
            group = groups.get((model, c, name))
            if not group:
                continue
            med = {k: statistics.median(g[k] for g in group)
                   for k in ("rps", "p50", "p99", "cpu_ms", "others")}
            rounds = " / ".join(f"{g['rps']:.0f}" for g in group)
            ratio = ""
            if base and name != "torchserve":
                b = {k: statistics.median(g[k] for g in base) for k in ("rps", "p50", "p99")}
                per = {g["round"]: g["rps"] for g in base}
                each = " / ".join(f"{g['rps'] / per[g['round']]:.2f}" for g in group
                                  if per.get(g["round"]))
                ratio = (f"{med['rps'] / b['rps']:6.2f}x {med['p50'] / b['p50']:5.2f}x "
                         f"{med['p99'] / b['p99']:5.2f}x")
                rounds += f"; {each}"
            lines.append(f"{model:10} {c:>3} {name:24} {med['rps']:>9.1f} {med['p50']:>8.2f} "
                         f"{med['p99']:>8.2f} {sum(g['errors'] for g in group):>4} "
                         f"{med['cpu_ms']:>7.3f} {med['others']:>5.2f}  "
                         f"{ratio:>22}  {rounds}")
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """Issue 19's goals, on the medians: at c=32 at least 2x TorchServe's req/s and at most
    0.5x its p99, at c=1 at most 0.5x its p50, for each model."""
    def median(server: str, model: str, c: int, key: str) -> float | None:
        values = [r[key] for r in rows if (r["server"], r["model"], r["c"]) == (server, model, c)]
        return statistics.median(values) if values else None

    out = []
    for model in sorted({r["model"] for r in rows}):
        for c, key, want, above in ((32, "rps", 2.0, True), (32, "p99", 0.5, False),
                                    (1, "p50", 0.5, False)):
            ts, ms = median("torchserve", model, c, key), median("modelserve", model, c, key)
            if not ts or ms is None:
                continue
            ratio = ms / ts
            met = ratio >= want if above else ratio <= want
            out.append(f"{model:10} c={c:<3} {key:4} {ratio:6.3f}x TorchServe "
                       f"({'≥' if above else '≤'} {want}x: {'met' if met else 'NOT met'})")
    return "\n".join(out)


def record(text: str, args: argparse.Namespace) -> None:
    """Append the run to bench/RESULTS.md: machine, command, table, goals."""
    import torch

    command = ".venv/bin/python " + shlex.join(sys.argv)
    load = os.getloadavg()
    section = (
        f"\n## {time.strftime('%Y-%m-%d')} — drop-in: the user's TorchServe archives, handler "
        f"and config.properties (`ts_dropin.py`)\n\n"
        f"Machine: {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average before the run {load[0]:.2f}. "
        f"wrk c as listed, {args.warmup:g} s warm-up + {args.duration:g} s measured, "
        f"`Content-Type: {args.content_type}`. CPU ms: the server's process tree (frontend "
        f"and workers; TorchServe: JVM and workers) per answered request; other: cores busy "
        f"outside the server while measuring (wrk included: a quiet machine shows ~0.1); "
        f"x = modelserve / TorchServe, medians over the rounds.\n\n"
        f"```sh\n{command}\n```\n\n```\n{text}\n```\n")
    with RESULTS.open("a") as f:
        f.write(section)
    print(f"appended to {RESULTS}")
