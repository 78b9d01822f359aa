"""The coalescing transport: a head and a body written in one loop turn leave as one write
(a large body gathered with the head, not copied), in order; a close, a large first write or
the turn's end sends what is held."""

from __future__ import annotations

import asyncio

from modelserve.server.transport.http.coalesce import HOLD_MAX, CoalescingTransport


class Raw:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:  # one gathered write (writev)
        assert not self.closed
        self.writes.append(data)  # type: ignore[arg-type]

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"raw {name}"


def test_head_and_body_of_one_turn_are_one_write_and_a_lone_head_goes_at_turn_end():
    async def main() -> list[bytes]:
        raw = Raw()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HEAD\r\n\r\n")
        assert raw.writes == [] and t.get_write_buffer_size() == 8
        t.write(b"body")
        assert raw.writes == [b"HEAD\r\n\r\nbody"]
        t.write(b"head only")  # e.g. a 100 Continue, or a stream's start
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"head only"
        await asyncio.sleep(0)  # the scheduled flushes find nothing more to send
        assert t.get_extra_info("peername") == "raw peername"
        return raw.writes

    assert asyncio.run(main()) == [b"HEAD\r\n\r\nbody", b"head only"]


def test_large_writes_are_not_copied_and_close_sends_what_is_held():
    async def main() -> Raw:
        raw = Raw()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        big = b"x" * HOLD_MAX
        t.write(b"head")
        t.write(big)
        assert raw.writes == [(b"head", big)] and raw.writes[0][1] is big
        t.write(big)
        assert raw.writes[1] is big
        t.write(b"last")
        t.close()
        assert raw.writes[-1] == b"last" and raw.closed
        await asyncio.sleep(0)  # the turn's flush after the close writes nothing
        return raw

    raw = asyncio.run(main())
    assert len(raw.writes) == 3
