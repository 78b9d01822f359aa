"""The zygote: one process imports torch and the worker code once, then forks every worker.

A forked worker shares the zygote's pages (torch's libraries, its operator tables, the Python
modules) until it writes to them, so each worker costs its model and its own state rather than
another copy of torch (measured in bench/RESULTS.md), and starts without re-importing torch.

Runs as ``python -m modelserve.worker.zygote --fd N``; frames of :mod:`modelserve.ipc` on the
inherited socket:

frontend -> zygote
    ``{"op": "fork", "id": int, "args": [worker CLI args, no --fd], "env": {...}}``, sent
    with two file descriptors as SCM_RIGHTS data: the worker's socket, its stdout/stderr pipe
zygote -> frontend
    ``{"op": "ready", "pid": int}`` once, after the imports
    ``{"op": "forked", "id": int, "pid": int}`` or ``{"op": "fork_failed", "id", "error"}``
    ``{"op": "exit", "pid": int, "code": int}`` when a worker ends (``code`` as
    ``Popen.returncode``: ``-N`` for signal N)

The zygote never runs a model (OpenMP and CUDA must not start before a fork). It exits when
the frontend's end of the socket closes, and dies with the frontend (PDEATHSIG); its workers
die with it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback
from collections import deque
from typing import Any

from modelserve import ipc
from modelserve.worker.process import die_with_parent, preset_thread_env, set_process_name

PRELOAD = ("numpy", "torch", "modelserve.worker.main", "modelserve.handlers.tensor_handler")


def preload() -> None:
    """Import what every worker imports; a module that is not installed is skipped."""
    preset_thread_env(1)  # workers set their own count after the fork
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    # Objects that exist now live as long as the zygote: the collector of a worker never
    # scans them, so it does not write to (and so copy) the pages they share.
    gc.freeze()


def _run_worker(msg: dict[str, Any], sock_fd: int, out_fd: int) -> int:
    """In the forked child: become the worker (``modelserve.worker.main``)."""
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    os.environ.clear()
    os.environ.update(msg["env"])
    args = msg["args"]
    if "--model-name" in args:
        set_process_name(f"ms:{args[args.index('--model-name') + 1]}")
    from modelserve.worker.main import main

    return main([*args, "--fd", str(sock_fd)])


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: deque[int] = deque()  # received descriptors, in the order they came
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self._wake_w = wake_w
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work

    def serve(self) -> int:
        self.sock.sendall(ipc.encode({"op": "ready", "pid": os.getpid()}))
        while True:
            ready, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
                self._reap()
            if self.sock in ready:
                data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 16)
                self.fds.extend(fds)
                if not data:
                    return 0  # the frontend is gone
                self.buf += data
                for msg in self._frames():
                    if msg.get("op") == "fork":
                        self._fork(msg)

    def _frames(self) -> list[dict[str, Any]]:
        out = []
        while len(self.buf) >= ipc.HEADER.size:
            (length,) = ipc.HEADER.unpack_from(self.buf)
            end = ipc.HEADER.size + length
            if len(self.buf) < end:
                break
            out.append(ipc.decode(bytes(self.buf[ipc.HEADER.size:end])))
            del self.buf[:end]
        return out

    def _fork(self, msg: dict[str, Any]) -> None:
        sock_fd, out_fd = self.fds.popleft(), self.fds.popleft()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(sock_fd)
            os.close(out_fd)
            self.sock.sendall(ipc.encode({"op": "fork_failed", "id": msg["id"],
                                          "error": f"fork: {exc}"}))
            return
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self.sock.close()
                os.close(self.wake_r)
                os.close(self._wake_w)
                for fd in self.fds:
                    os.close(fd)
                code = _run_worker(msg, sock_fd, out_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(sock_fd)
        os.close(out_fd)
        self.sock.sendall(ipc.encode({"op": "forked", "id": msg["id"], "pid": pid}))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.sock.sendall(ipc.encode({"op": "exit", "pid": pid,
                                          "code": os.waitstatus_to_exitcode(status)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelserve.worker.zygote")
    p.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    args = p.parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend handles these for its group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_process_name("ms-zygote")
    preload()
    return Zygote(socket.socket(fileno=args.fd)).serve()


if __name__ == "__main__":
    sys.exit(main())
