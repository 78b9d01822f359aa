"""Unit tests run in this process alone: one that starts a process or opens a network socket
fails here, so `make test-unit` stays fast and needs no server (integration tests, under
tests/integration/, use the real thing)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest


class NotAUnitTest(RuntimeError):
    """What a unit test that reaches for a process or the network gets."""


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise NotAUnitTest("a unit test starts no process: move it to tests/integration/")


def _local_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Unix sockets stay allowed: asyncio's event loop and the IPC framing tests use them."""
    def guarded(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise NotAUnitTest("a unit test opens no network socket: "
                               "move it to tests/integration/")
        return method(self, *args, **kwargs)
    return guarded


@pytest.fixture(autouse=True)
def _no_processes_or_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse)
    monkeypatch.setattr(socket.socket, "connect", _local_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "bind", _local_only(socket.socket.bind))
    yield
