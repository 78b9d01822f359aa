"""Write a file so that readers see the old content or the new, never a torn one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """A uniquely named temp file beside ``path`` (created 0600 by mkstemp, then ``mode``, so
    secrets are never readable by others even for an instant), fsync, then ``os.replace``.
    Raises OSError, leaving ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name: two threads (registrations run archive work in threads) must not share it
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
