"""Find and start an archive's handler, with TorchServe's rules.

``handler`` in the manifest is ``module[.py][:function]``. The module is looked up in the
model directory first, then among modelserve's built-in handlers, then on ``sys.path``.
A function entry is called as ``fn(None, ctx)`` once and ``fn(data, ctx)`` per batch;
otherwise the module must define exactly one class, which is instantiated, initialised once,
and whose ``handle(data, ctx)`` serves each batch.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Handler:
    """A started handler: the per-batch callable and, for a handler class, its instance."""

    entry: Entry
    instance: Any = None

    @property
    def thread_safe(self) -> bool:
        """Whether batches may run through copies of it at once: its class may (see
        :func:`runs_in_lanes`) and the started instance did not take it back (a
        ``torch.compile``d model does)."""
        return self.instance is not None and runs_in_lanes(type(self.instance)) \
            and getattr(self.instance, "thread_safe", False) is True

    def copy(self) -> Entry:
        """The entry of a shallow copy: it shares the model and what ``initialize`` built,
        not the attributes a handler sets per batch (``self.context``). A function handler
        has nothing to copy."""
        if self.instance is None:
            return self.entry
        return getattr(copy.copy(self.instance), self.entry.__name__)


def declares_thread_safe(cls: type) -> bool:
    """``thread_safe = True`` in the class's own body: not inherited, since a subclass may
    keep per-request state (a tokenizer, a cache) that its parent did not."""
    return vars(cls).get("thread_safe") is True


def keeps_parents_state(cls: type) -> bool:
    """A subclass that defines neither ``initialize`` nor ``__init__`` of a class that
    declares ``thread_safe = True`` (the TorchServe way: preprocess, inference, postprocess
    over ``BaseHandler``): what lane copies share is what the parent's ``initialize`` built,
    which the parent declared safe, and what the subclass sets per batch is each copy's own.
    A subclass that builds state of its own (a tokenizer: "Already borrowed" across threads)
    must still say ``thread_safe = True`` itself. (Issue 19: lanes served such a handler at
    1.6x one lane on every thread, resnet-style batches at c=32, interleaved runs.)"""
    for klass in cls.__mro__:  # the nearest class that says either decides
        own = vars(klass)
        if "thread_safe" in own:
            return own["thread_safe"] is True
        if "initialize" in own or "__init__" in own:
            return False
    return False


def runs_in_lanes(cls: type) -> bool:
    """Whether copies of ``cls`` may run batches at once: it says so, or it keeps a
    thread-safe built-in parent's state (:func:`keeps_parents_state`)."""
    return declares_thread_safe(cls) or keeps_parents_state(cls)


@dataclass(frozen=True)
class HandlerSource:
    """An imported handler, not yet started: a class, a module's ``handle``, or a function."""

    name: str
    cls: type | None = None
    function: Callable[..., Any] | None = None

    @property
    def thread_safe(self) -> bool:
        return self.cls is not None and runs_in_lanes(self.cls)

    def start(self, context: Context) -> Handler:
        """Initialise it once (TorchServe's rules: ``fn(None, ctx)`` for a function)."""
        if self.cls is not None:
            instance = self.cls()
            instance.initialize(context)
            return Handler(instance.handle, instance)
        assert self.function is not None
        self.function(None, context)
        return Handler(self.function)


def find_handler(handler: str, model_dir: Path) -> HandlerSource:
    """Import the handler module and find what serves its batches."""
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
        return HandlerSource(handler, function=fn)

    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
    ]
    if len(classes) == 1:
        return HandlerSource(handler, cls=classes[0])
    if not classes and callable(getattr(module, "handle", None)):
        return HandlerSource(handler, function=module.handle)
    raise HandlerLoadError(
        f"handler module '{module_name}' must define exactly one class or a 'handle' "
        f"function; found {len(classes)} classes"
    )


def load_entry(handler: str, model_dir: Path, context: Context) -> Entry:
    """Import the handler, initialise it once, and return the per-batch callable."""
    return find_handler(handler, model_dir).start(context).entry
