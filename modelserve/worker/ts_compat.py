"""``import ts.…`` inside a worker resolves to modelserve's own classes.

Handler files written for TorchServe import ``ts.torch_handler.base_handler``, ``ts.context``,
``ts.utils.util`` and friends. Installed in the worker process only (never in the frontend),
this finder maps those names onto modelserve modules, so such files run unchanged without any
package named ``ts`` installed; it is placed first so that a real TorchServe install does not
shadow it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIASES = {
    "ts.context": "modelserve.worker.context",
    "ts.torch_handler.base_handler": "modelserve.handlers.base_handler",
    "ts.torch_handler.vision_handler": "modelserve.handlers.vision",
    "ts.torch_handler.image_classifier": "modelserve.handlers.image_classifier",
    "ts.torch_handler.image_segmenter": "modelserve.handlers.image_segmenter",
    "ts.torch_handler.object_detector": "modelserve.handlers.object_detector",
    "ts.torch_handler.text_classifier": "modelserve.handlers.text_classifier",
    "ts.utils.util": "modelserve.handlers.util",
    "ts.metrics.dimension": "modelserve.worker.metrics",
    "ts.metrics.metric_type_enum": "modelserve.worker.metrics",
    # send_intermediate_predict_response (streaming): its current and its deprecated home
    "ts.handler_utils.utils": "modelserve.worker.streaming",
    "ts.protocol.otf_message_handler": "modelserve.worker.streaming",
}
PACKAGES = {"ts", "ts.torch_handler", "ts.utils", "ts.metrics", "ts.handler_utils", "ts.protocol"}


class TsAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in ALIASES or fullname in PACKAGES:
            return importlib.util.spec_from_loader(fullname, self,
                                                   is_package=fullname in PACKAGES)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        target = ALIASES.get(spec.name)
        return importlib.import_module(target) if target else None  # packages: a fresh module

    def exec_module(self, module: ModuleType) -> None:
        pass  # aliases are already executed; packages stay empty namespaces


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, TsAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TsAliasFinder())
