"""py-spy for ``ts_dropin.py --profile``: sample a server's Python processes during the
measured window of a load step, then say where their time went (self and inclusive shares of
the non-idle samples, per function)."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

PY_SPY: str | None = shutil.which("py-spy")  # ts_dropin.py prefers its venv's
TOP = 12
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def torchserve_worker(found: list[tuple[int, str]], model: str) -> int | None:
    """TorchServe's worker command line does not name its model; of the two here, resnetish's
    worker holds ~47 MB more weights, so it is the larger one by RSS."""
    if not found:
        return None

    def rss(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            return 0

    pids = sorted((pid for pid, _ in found), key=rss)
    return pids[-1] if model == "resnetish" else pids[0]


class Sampler:
    """``py-spy record`` on each named pid, from ``delay`` s on for ``duration`` s (the
    measured window after wrk's warm-up); nothing when ``folder`` is None."""

    def __init__(self, folder: Path | None, label: str, pids: dict[str, int | None],
                 delay: float, duration: float) -> None:
        self.folder, self.label = folder, label
        self.pids = {k: v for k, v in pids.items() if v}
        self.delay, self.duration = delay, duration
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Sampler:
        if self.folder is None or not PY_SPY:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for role, pid in self.pids.items():
            out = self.folder / f"{self.label}-{role}.txt"
            cmd = (f"sleep {self.delay + 0.5:g}; exec {PY_SPY} record --format raw --rate 100 "
                   f"--nonblocking --duration {max(1, int(self.duration) - 1)} --pid {pid} "
                   f"--output {out}")
            self.procs.append(subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def digest(path: Path) -> str:
    """Top functions by self and by inclusive share of the samples in one raw py-spy file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    if not total:
        return f"{path.name}: no samples"
    head = f"{path.name}: {total} samples (~{total / 100:.1f} CPU-s at 100 Hz, idle excluded)"
    rows = [f"  self {n / total:6.1%}  {f}" for f, n in own.most_common(TOP)]
    rows += [f"  incl {n / total:6.1%}  {f}" for f, n in incl.most_common(TOP)]
    return "\n".join([head, *rows])


def summary(folder: Path) -> str:
    """Every profile in ``folder``, digested (also written to ``folder/summary.txt``)."""
    text = "\n\n".join(digest(p) for p in sorted(folder.glob("*.txt"))
                       if p.name != "summary.txt")
    (folder / "summary.txt").write_text(text + "\n")
    return text
