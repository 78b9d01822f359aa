"""Install Triton's perf_analyzer into a venv of its own, idempotently: fast when it is there.

The C++ binary ships inside the tritonclient wheel (PyPI's ``perf-analyzer`` is a placeholder)
and links against libb64 (Debian: ``libb64-0d``) and libcudart.so.12, which it loads even on a
CPU-only machine. So: a venv under bench/out/ (git-ignored) from the lock
requirements/perf-analyzer.txt (tritonclient + the CUDA runtime wheel), libb64 from apt where
it is missing, and ``LD_LIBRARY_PATH`` pointing at the wheel's libcudart. A stamp in the venv
holds the lock's hash, so a changed lock reinstalls and an unchanged one costs one ``ldd``.

    python3 bench/perf_analyzer_install.py [--venv DIR]     # or: make perf-analyzer

Standard library only: ``make perf-analyzer`` runs it before any project venv exists, and the
integration test (tests/integration/test_perf_analyzer.py) calls :func:`ensure`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "perf-analyzer.txt"
DEFAULT_VENV = ROOT / "bench" / "out" / "perf-analyzer-venv"
APT_PACKAGE = "libb64-0d"


class InstallError(RuntimeError):
    """perf_analyzer could not be installed here; the message says which step failed."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """The installed binary and the environment it needs to start."""

    binary: Path
    env: dict[str, str]

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.binary), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)


def _lock_hash() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


@contextlib.contextmanager
def _exclusive(venv: Path) -> Iterator[None]:
    """One installer at a time per venv (a test run and a bench run may start together)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _step(what: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise InstallError(f"{what} failed ({' '.join(cmd)}):\n{(out.stdout + out.stderr)[-2000:]}")


def _install_venv(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", sys.executable)  # a venv's python makes a venv too
    _step("creating the venv", [base, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    _step("pip install -r requirements/perf-analyzer.txt", [*pip, "-r", str(LOCK)])
    (venv / ".perf-analyzer-lock").write_text(_lock_hash())


def _cudart_dir(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
    if not found:
        raise InstallError(f"libcudart.so.12 is not in {venv}: the lock lost "
                           "nvidia-cuda-runtime-cu12")
    return found[0].parent


def _missing_libraries(binary: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    return [line.split()[0] for line in out.stdout.splitlines() if "not found" in line]


def _apt_install(package: str) -> None:
    """``apt-get install`` as root, else through ``sudo -n`` (never a password prompt)."""
    if shutil.which("apt-get") is None:
        raise InstallError(f"{package} is missing and there is no apt-get to install it")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    try:
        _step(f"apt-get install {package}", install, env)
    except InstallError:  # stale or empty package lists: refresh once, then try again
        _step("apt-get update", [*sudo, "apt-get", "update", "-q"], env)
        _step(f"apt-get install {package}", install, env)


def ensure(venv: Path = DEFAULT_VENV) -> PerfAnalyzer:
    """perf_analyzer, ready to run; installs what is missing. Raises InstallError."""
    venv = venv.resolve()
    binary = venv / "bin" / "perf_analyzer"
    with _exclusive(venv):
        stamp = venv / ".perf-analyzer-lock"
        if not (binary.is_file() and stamp.is_file() and stamp.read_text() == _lock_hash()):
            _install_venv(venv)
        libs = str(_cudart_dir(venv))
        if os.environ.get("LD_LIBRARY_PATH"):
            libs += os.pathsep + os.environ["LD_LIBRARY_PATH"]
        env = {**os.environ, "LD_LIBRARY_PATH": libs}
        missing = _missing_libraries(binary, env)
        if any(lib.startswith("libb64") for lib in missing):
            _apt_install(APT_PACKAGE)
            missing = _missing_libraries(binary, env)
        if missing:
            raise InstallError(f"{binary} cannot load {', '.join(missing)}")
    return PerfAnalyzer(binary, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    try:
        pa = ensure(args.venv)
    except InstallError as exc:
        sys.exit(f"perf_analyzer: {exc}")
    print(f"env LD_LIBRARY_PATH={pa.env['LD_LIBRARY_PATH']} {pa.binary}")


if __name__ == "__main__":
    main()
