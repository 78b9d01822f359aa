"""``import ts.…`` inside a worker resolves to modelserve's classes (no ``ts`` installed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from modelserve.handlers.util import load_label_mapping, map_class_to_label
from modelserve.worker.ts_compat import ALIASES


def test_every_alias_imports_in_a_fresh_interpreter():
    code = textwrap.dedent(f"""
        import importlib, importlib.util
        assert importlib.util.find_spec("ts") is None, "a real ts package is installed"
        from modelserve.worker import ts_compat
        ts_compat.install()
        for alias, target in {ALIASES!r}.items():
            assert importlib.import_module(alias) is importlib.import_module(target), alias
        from ts.torch_handler.base_handler import BaseHandler
        from ts.torch_handler.vision_handler import VisionHandler
        from ts.torch_handler.image_classifier import ImageClassifier
        from ts.utils.util import PredictionException, map_class_to_label
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes
        from ts.context import Context
        from ts.handler_utils.utils import send_intermediate_predict_response
        from ts.protocol.otf_message_handler import send_intermediate_predict_response
        assert issubclass(ImageClassifier, VisionHandler) and issubclass(VisionHandler, BaseHandler)
        assert PredictionException("x", 418).error_code == 418
        try:
            import ts.no_such_module
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("unknown ts modules must not import")
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_label_mapping_layouts(tmp_path):
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"0": ["n01440764", "tench"], "1": "goldfish"}))
    assert load_label_mapping(path) == {"0": "tench", "1": "goldfish"}
    path.write_text(json.dumps({"object_type_names": ["background", "cat", "dog"]}))
    assert load_label_mapping(path) == {"0": "background", "1": "cat", "2": "dog"}
    assert load_label_mapping(tmp_path / "missing.json") is None


def test_map_class_to_label():
    probs = [[0.1, 0.9], [0.7, 0.3]]
    assert map_class_to_label(probs) == [{"0": 0.1, "1": 0.9}, {"0": 0.7, "1": 0.3}]
    assert map_class_to_label(probs, {"0": "a", "1": "b"}, [[1, 0], [0, 1]]) == [
        {"b": 0.1, "a": 0.9}, {"a": 0.7, "b": 0.3}]
