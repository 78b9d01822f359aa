"""Import a Python file shipped in an archive (handler, model file) as a top-level module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_file(path: Path) -> ModuleType | None:
    """Import ``path`` as module ``path.stem``, with its directory on ``sys.path`` so that it
    can import its sibling files (TorchServe's layout). None when Python cannot load such a
    file; errors raised by the file's own code propagate."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
