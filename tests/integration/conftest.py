"""Integration suite order: the container tests (test_container.py) run last, so that the
image `make test` builds in the background meanwhile (docker/engine.sh images) is ready."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name == "test_container.py")  # stable: order kept
