"""A trivial HTTP/1.1 endpoint: the load generator's ceiling, with no server work in the way.

It answers every request (GET or POST, bodies skipped by Content-Length) with a fixed 200 on a
uvloop protocol, so a load generator measured against it shows how many requests per second it
can drive at all. ``serve_bench.py`` runs it in a subprocess:

    python bench/trivial_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class Trivial(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.skip = 0  # body bytes of the current request still to discard

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        replies = 0
        while True:
            if self.skip:
                taken = min(self.skip, len(buf))
                self.skip -= taken
                buf = buf[taken:]
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end].lower(), buf[end + 4:]
            start = head.find(b"content-length:")
            if start >= 0:
                stop = head.find(b"\r\n", start)
                self.skip = int(head[start + 15:stop if stop >= 0 else None])
            replies += 1
        self.buffer = buf
        if replies:
            self.transport.write(RESPONSE * replies)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Trivial, "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
