"""Frontend side of the zygote (``modelserve.worker.zygote``): start it, ask it for workers.

The zygote is started on the first worker's launch and again after it dies; workers forked
from it look to the pool like ``asyncio.subprocess.Process`` objects (:class:`ForkedProcess`).
``modelserve start`` launches it (:func:`launch`) before it imports the server, when models
load at start: the zygote's import of torch (~1.5 s) then runs beside the frontend's own
imports (~0.7 s) instead of after them, and the first worker is up that much sooner.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from modelserve import ipc

# a start that failed for want of descriptors, processes or memory is tried again at the next
# fork (a slow-client flood passes); any other failure makes workers spawn fresh interpreters
TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM}

log = logging.getLogger("modelserve.zygote")


class ZygoteError(RuntimeError):
    """The zygote could not start or could not fork."""


Launched = tuple[subprocess.Popen[bytes], socket.socket]  # the zygote, our end of its socket


def launch() -> Launched:
    """Start ``python -m modelserve.worker.zygote``; it says it is ready once it has imported
    torch. Needs no event loop, so the CLI can call it before the server's imports."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve.worker.zygote", "--fd", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    log.info("worker zygote started (pid %s)", proc.pid)
    return proc, ours


async def _reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Wait for the zygote to exit (it does at its socket's EOF); kill it past ``timeout``."""
    try:
        await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)


class ForkedProcess:
    """A worker the zygote forked: the part of ``asyncio.subprocess.Process`` the pool uses.

    The frontend is not the worker's parent, so its exit status comes from the zygote."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout = asyncio.StreamReader()  # fed from the worker's output pipe
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()


class Zygote:
    """One zygote process per frontend, started when first needed (or adopted: ``early``, one
    :func:`launch` made before the event loop)."""

    def __init__(self, startup_timeout: float = 120.0, early: Launched | None = None) -> None:
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self._early = early
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None  # our end, for sending (with descriptors)
        self._writer: asyncio.StreamWriter | None = None  # its dup, which asyncio reads
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._broken = ""  # why the zygote could not start: workers are spawned instead

    async def fork(self, args: list[str], env: dict[str, str], fd: int) -> ForkedProcess:
        """A new worker running ``python -m modelserve.worker *args --fd <fd>`` with ``env``;
        ``fd`` (the worker's socket) is passed to it. Raises ZygoteError."""
        async with self._lock:
            if self._broken:
                raise ZygoteError(self._broken)
            if self._sock is None:
                try:
                    await self._start()
                except (OSError, ZygoteError) as exc:
                    reason = f"the worker zygote could not start: {exc}"
                    if not (isinstance(exc, OSError) and exc.errno in TRANSIENT):
                        self._broken = reason
                    raise ZygoteError(reason) from exc
        assert self._sock is not None
        fork_id = next(self._ids)
        future: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._pending[fork_id] = future
        out_r, out_w = os.pipe()
        try:
            frame = ipc.encode({"op": "fork", "id": fork_id, "args": args, "env": env})
            await self._send(frame, [fd, out_w])
            child = await asyncio.wait_for(future, self.startup_timeout)
        except BaseException:
            self._pending.pop(fork_id, None)
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(child.stdout), os.fdopen(out_r, "rb", buffering=0))
        return child

    async def close(self) -> None:
        """End the zygote (its workers were stopped by their pools)."""
        self._disconnect()
        if self._early is not None:  # launched, never asked for a worker
            (proc, sock), self._early = self._early, None
            sock.close()
            await _reap(proc)
        if self._proc is not None:
            await _reap(self._proc)
        if self._reader_task is not None:
            await self._reader_task

    # -- internals ---------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._proc is not None:  # the one before, which exited
            await _reap(self._proc)
        (self._proc, ours), self._early = self._early or launch(), None
        try:
            reader, self._writer = await asyncio.open_unix_connection(sock=ours.dup())
        except BaseException:
            ours.close()  # the zygote reads EOF and would exit anyway
            self._proc.kill()
            await _reap(self._proc)
            self._proc = None
            raise
        try:
            hello = await asyncio.wait_for(ipc.read_frame(reader), self.startup_timeout)
        except TimeoutError:
            hello = None
        if hello is None or hello.get("op") != "ready":
            self._proc.kill()
            ours.close()
            self._writer.close()
            raise ZygoteError("no ready message (see its output above)")
        self.pid = hello["pid"]
        ours.setblocking(False)
        self._sock = ours
        self._reader_task = asyncio.create_task(self._read(reader))
        log.info("worker zygote ready (pid %s)", self.pid)

    def _disconnect(self) -> None:
        """Close both our descriptors of the socket: the zygote reads EOF and exits."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _send(self, frame: bytes, fds: list[int]) -> None:
        """One sendmsg: the descriptors travel with the frame's first byte."""
        assert self._sock is not None
        sent = 0
        while sent < len(frame):
            try:
                if sent == 0:
                    sent = socket.send_fds(self._sock, [frame], fds)
                else:
                    sent += self._sock.send(frame[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (msg := await ipc.read_frame(reader)) is not None:
                self._on_message(msg)
        except (ConnectionError, ipc.FrameError) as exc:
            log.error("worker zygote connection broke: %s", exc)
        self._lost()

    def _on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "forked":
            future = self._pending.pop(msg["id"], None)
            child = ForkedProcess(msg["pid"])
            if future is None or future.done():
                # its fork() timed out or was cancelled: nobody would ever stop this worker
                log.warning("worker pid %s was forked after its launch was abandoned; "
                            "killed", child.pid)
                child.kill()
                return
            # registered here, not in fork(): the worker's exit frame may come next, before
            # fork() resumes
            self._children[child.pid] = child
            future.set_result(child)
        elif op == "fork_failed":
            future = self._pending.pop(msg["id"], None)
            if future is not None and not future.done():
                future.set_exception(ZygoteError(msg.get("error", "fork failed")))
        elif op == "exit":
            child = self._children.pop(msg["pid"], None)
            if child is not None:
                child.exited(msg["code"])

    def _lost(self) -> None:
        """The zygote ended: its workers died with it (PDEATHSIG); the next fork restarts it."""
        if self._sock is not None:
            log.error("worker zygote (pid %s) exited; its workers were killed with it", self.pid)
        self._disconnect()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ZygoteError("the worker zygote exited"))
        self._pending.clear()
        for child in self._children.values():
            child.exited(-signal.SIGKILL)
        self._children.clear()
