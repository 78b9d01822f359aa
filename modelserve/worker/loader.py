"""Find and start an archive's handler, with TorchServe's rules.

``handler`` in the manifest is ``module[.py][:function]``. The module is looked up in the
model directory first, then among modelserve's built-in handlers, then on ``sys.path``.
A function entry is called as ``fn(None, ctx)`` once and ``fn(data, ctx)`` per batch;
otherwise the module must define exactly one class, which is instantiated, initialised once,
and whose ``handle(data, ctx)`` serves each batch.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from modelserve.pyfile import import_file
from modelserve.worker.context import Context

Entry = Callable[[list[dict[str, Any]] | None, Context], Any]

BUILTIN_PACKAGE = "modelserve.handlers"


class HandlerLoadError(RuntimeError):
    """The archive's handler could not be found or started."""


def _import_handler_module(module_name: str, model_dir: Path) -> ModuleType:
    local = model_dir / f"{module_name}.py"
    if local.is_file():
        module = import_file(local)
        if module is None:
            raise HandlerLoadError(f"cannot import handler file {local}")
        return module
    for candidate in (f"{BUILTIN_PACKAGE}.{module_name}", module_name):
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if exc.name not in (candidate, candidate.rsplit(".", 1)[0], module_name):
                raise  # the handler exists but one of its own imports is missing
    raise HandlerLoadError(
        f"handler module '{module_name}' is neither a file in the archive, "
        f"a built-in handler, nor an importable module"
    )


def load_entry(handler: str, model_dir: Path, context: Context) -> Entry:
    """Import the handler, initialise it once, and return the per-batch callable."""
    module_part, _, function_name = handler.partition(":")
    module_name = Path(module_part).name.removesuffix(".py")
    if not module_name:
        raise HandlerLoadError(f"invalid handler '{handler}'")
    module = _import_handler_module(module_name, model_dir)

    if function_name:
        fn = getattr(module, function_name, None)
        if not callable(fn):
            raise HandlerLoadError(
                f"handler module '{module_name}' has no function '{function_name}'"
            )
        fn(None, context)
        return fn

    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
    ]
    if len(classes) == 1:
        instance = classes[0]()
        instance.initialize(context)
        return instance.handle
    if not classes and callable(getattr(module, "handle", None)):
        module.handle(None, context)
        return module.handle
    raise HandlerLoadError(
        f"handler module '{module_name}' must define exactly one class or a 'handle' "
        f"function; found {len(classes)} classes"
    )
