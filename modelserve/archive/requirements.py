"""Per-archive Python requirements (TorchServe's ``install_py_dep_per_model``).

They are installed once per requirements-file content into their own directory, which the
model's workers put first on ``sys.path``; the server's own environment is never modified.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_TIMEOUT_S = 600


class RequirementsError(RuntimeError):
    """pip could not install the archive's requirements."""


def install_requirements(requirements: Path, workdir: Path) -> Path:
    """Install into ``workdir/deps/<content hash>`` (reused when present); returns that dir,
    absolute: pip runs in the requirements file's folder (where its relative lines point),
    and a relative ``workdir`` (the default, ``.modelserve``) would land there instead."""
    requirements = requirements.absolute()
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = (workdir / "deps" / digest).absolute()
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    log.info("installing %s into %s", requirements.name, target)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-input", "--target", str(target), "-r", str(requirements)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              cwd=requirements.parent)
    except subprocess.TimeoutExpired:
        raise RequirementsError(f"pip install -r {requirements.name} timed out") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RequirementsError(f"pip install -r {requirements.name} failed: {tail}")
    (target / ".complete").touch()
    return target
