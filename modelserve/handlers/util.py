"""Helpers TorchServe handlers import from ``ts.utils.util``."""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import yaml

from modelserve.handlers.errors import PredictionException

__all__ = [
    "PredictionException",
    "get_yaml_config",
    "list_classes_from_module",
    "load_label_mapping",
    "map_class_to_label",
]

log = logging.getLogger(__name__)


def load_label_mapping(mapping_file_path: str | os.PathLike[str]) -> dict[str, str] | None:
    """``index_to_name.json`` as ``{"0": "label"}``; ImageNet's ``["n0144", "tench"]`` values
    keep their last element. None (with a warning) when the file is absent."""
    if not os.path.isfile(mapping_file_path):
        log.warning("missing the index_to_name.json file; labels will be class indices")
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError("index_to_name.json must hold a JSON object")
    if isinstance(mapping.get("object_type_names"), list):  # the older detector layout
        mapping = dict(enumerate(mapping["object_type_names"]))
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if isinstance(value, list) and value:
            value = value[-1]
        if not isinstance(value, str):
            raise ValueError(f"index_to_name.json: label of {key!r} must be a string")
        out[str(key)] = value
    return out


def map_class_to_label(probs: Sequence[Sequence[float]], mapping: dict[str, Any] | None = None,
                       lbl_classes: Sequence[Sequence[int]] | None = None
                       ) -> list[dict[str, float]]:
    """Per row, ``{label: probability}``; classes default to the row's positions."""
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("mapping must be a dict")
    rows = []
    for i, row in enumerate(probs):
        classes = lbl_classes[i] if lbl_classes is not None else range(len(row))
        rows.append({
            (str(mapping[str(c)]) if mapping is not None else str(c)): p
            for c, p in zip(classes, row)
        })
    return rows


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """Classes defined in ``module`` itself (optionally only subclasses of ``parent_class``)."""
    classes = [
        obj for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__
    ]
    if parent_class is not None:
        classes = [c for c in classes if issubclass(c, parent_class)]
    return classes


def get_yaml_config(yaml_file_path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(yaml_file_path) as f:
        return yaml.safe_load(f) or {}
