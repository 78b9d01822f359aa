"""One send(2) for a response's head and body.

uvicorn writes a response's status line and headers when the application starts it, and the
body when it sends it: two writes, and on loopback or a fast network each is a whole trip
through the TCP stack (the largest single cost of a small answer, after parsing). The
transport here holds a first small write until the end of the loop turn; a write in the same
turn (the body, which Starlette sends right after the head) goes out with it as one (a large
body gathered with it, not copied). A large first write, a close, or the turn's end sends
what is held; nothing is reordered, delayed past the turn, or lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

HOLD_MAX = 16384  # bytes: a write at least this large is not copied into one with the head


class CoalescingTransport:
    """Wraps the protocol's transport; the rest of its interface is the wrapped one's."""

    __slots__ = ("raw", "_loop", "_held")

    def __init__(self, raw: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = raw
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:  # the second write of the turn: both as one
            self._held = None
            if len(data) < HOLD_MAX:
                self.raw.write(held + data)
            else:  # a large body is not copied: one gathered write (writev) with the head
                self.raw.writelines((held, data))
        elif len(data) >= HOLD_MAX or not data:
            self.raw.write(data)
        else:
            self._held = data
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self.raw.is_closing():
            self.raw.write(held)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def write_eof(self) -> None:
        self.flush()
        self.raw.write_eof()

    def abort(self) -> None:
        self._held = None
        self.raw.abort()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
