"""The worker's end of its socket, shared by the worker's batch lanes (``lanes``).

Frames are read by whichever lane needs the next one (no reader thread, so a lone lane reads
its batches itself, with no hand-off between threads): ``next_batch`` blocks for an ``infer``
frame, ``poll`` takes in what has arrived without waiting (a streaming batch looks for its
cancels between chunks). Cancels are kept per batch id, for batches already running and for
those still waiting here, whichever lane reads them. Writes are one ``sendall`` per frame
under a lock, so frames of different lanes never interleave.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from modelserve import ipc


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False  # the frontend said stop, or closed the socket
        self._pending: deque[dict[str, Any]] = deque()  # infer frames no lane has taken
        self._cancels: dict[int, set[int]] = {}  # batch id -> cancelled positions
        # told the torch threads the frontend now wants (its pool grew or shrank: lanes.Gate)
        self.on_threads: Callable[[int], None] = lambda threads: None
        self._read = threading.Lock()
        self._write = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        frame = ipc.encode(message)
        with self._write:
            self.sock.sendall(frame)

    def next_batch(self) -> dict[str, Any] | None:
        """The next ``infer`` frame; None once the frontend said stop or went away."""
        with self._read:
            while not self._pending:
                if self.closed:
                    return None
                self._take(ipc.recv_frame(self.sock))
            return self._pending.popleft()

    def ready(self) -> bool:
        """Whether a frame is here already: a lane asking for a batch now would not wait
        (the Gate's sign that batches queue for the lanes)."""
        return bool(self._pending) or self._arrived()

    def poll(self) -> None:
        """Take in every frame that has arrived, without waiting. When another lane is
        reading, it takes them in instead."""
        if not self._read.acquire(blocking=False):
            return
        try:
            while not self.closed and self._arrived():
                self._take(ipc.recv_frame(self.sock))
        finally:
            self._read.release()

    def begin(self, batch_id: int) -> set[int]:
        """A lane starts this batch: the set its cancels go to (filled by whichever lane
        reads them, also those that came while the batch waited here)."""
        return self._cancels.setdefault(batch_id, set())

    def end(self, batch_id: int) -> None:
        self._cancels.pop(batch_id, None)

    def _arrived(self) -> bool:
        """Whether the socket has bytes to read now."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _take(self, msg: dict[str, Any] | None) -> None:
        if msg is None or msg.get("op") == "stop":
            self.closed = True
        elif msg.get("op") == "infer":
            self._cancels[msg["id"]] = set()
            self._pending.append(msg)
        elif msg.get("op") == "threads":
            self.on_threads(max(1, int(msg.get("n") or 1)))
        elif msg.get("op") == "cancel":
            cancelled = self._cancels.get(msg.get("id"))
            if cancelled is not None:  # else: a batch that already ended
                cancelled.add(msg["idx"])
