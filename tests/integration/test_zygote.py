"""Workers forked from the zygote: shared memory, parentage, and what happens when it dies."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelserve.server.engine import zygote as zygote_module
from tests.conftest import Server, child_pids, pid_alive, ppid, wait_for, wait_logged

DIGIT = {"data": [0.0] * 64}


@pytest.fixture
def make_server(model_store: Path, tmp_path: Path) -> Iterator:
    made: list[Server] = []

    def make(config: dict) -> Server:
        srv = Server(tmp_path / f"srv{len(made)}", model_store, ["digits=digits.mar"],
                     extra_config=config)
        srv.root.mkdir()
        made.append(srv)
        return srv.start()

    yield make
    for srv in made:
        assert not srv.stop(), "a process outlived its server"


def shared_dirty_mb(pid: int) -> float:
    """Written pages this process shares with another (here: what the zygote imported)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Shared_Dirty line")


def predict_ok(srv: Server) -> bool:
    r = httpx.post(f"{srv.inference}/predictions/digits", json=DIGIT, timeout=30)
    return r.status_code == 200 and "class" in r.text


def scale(srv: Server, workers: int) -> None:
    r = httpx.put(f"{srv.management}/models/digits", timeout=60,
                  params={"min_worker": workers, "max_worker": workers, "synchronous": "true"})
    assert r.status_code == 200, r.text


def ready_pids(srv: Server) -> set[int]:
    [desc] = httpx.get(f"{srv.management}/models/digits").json()
    return {w["pid"] for w in desc["workers"] if w["status"] == "READY"}


def test_workers_fork_from_the_zygote_and_share_its_memory(make_server):
    srv = make_server({})
    scale(srv, 2)
    [zygote] = srv.zygote_pids()
    workers = ready_pids(srv)
    assert len(workers) == 2 and workers == srv.worker_pids()
    assert all(ppid(pid) == zygote for pid in workers)
    # the command line is the zygote's; the process name says which model a worker serves
    assert {Path(f"/proc/{pid}/comm").read_text().strip() for pid in workers} == {"ms:digits"}
    assert Path(f"/proc/{zygote}/comm").read_text().strip() == "ms-zygote"
    # torch and the worker code were imported once, in the zygote: each worker shares those
    # written pages (tens of MB) instead of holding its own copy
    assert all(shared_dirty_mb(pid) > 30 for pid in workers), \
        [shared_dirty_mb(pid) for pid in workers]
    assert predict_ok(srv)


def test_spawn_mode_starts_fresh_interpreters(make_server):
    srv = make_server({"worker_start": "spawn"})
    assert not srv.zygote_pids()
    workers = ready_pids(srv)
    assert workers and workers <= child_pids(srv.proc.pid)
    assert all(b"modelserve.worker" in Path(f"/proc/{p}/cmdline").read_bytes() for p in workers)
    assert predict_ok(srv)


def test_a_killed_zygote_takes_its_workers_and_both_come_back(make_server):
    srv = make_server({})
    scale(srv, 2)
    [zygote] = srv.zygote_pids()
    workers = ready_pids(srv)
    os.kill(zygote, signal.SIGKILL)
    # its workers die with it (PDEATHSIG), the pool restarts them through a new zygote
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=10)
    wait_for(lambda: len(ready_pids(srv)) == 2 and not ready_pids(srv) & workers, timeout=60)
    [again] = srv.zygote_pids()
    assert again != zygote
    assert all(ppid(pid) == again for pid in ready_pids(srv))
    assert predict_ok(srv)
    wait_logged(srv, "worker zygote", "exited")


def test_a_worker_forked_after_its_launch_was_abandoned_is_killed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """fork() timed out (or was cancelled) before the zygote's 'forked' frame came: that
    worker belongs to no pool, so the frontend kills it instead of leaving it running."""
    import asyncio
    import socket

    from modelserve.server.engine.zygote import Zygote

    (tmp_path / "sleepy.py").write_text("import time\ntime.sleep(120)\n")
    args = ["--model-dir", str(tmp_path), "--model-name", "sleepy", "--model-version", "1",
            "--handler", "sleepy.py", "--manifest", "{}"]

    async def abandon_one() -> tuple[int, set[int]]:
        zygote = Zygote()
        ours, theirs = socket.socketpair()
        try:
            kept = await zygote.fork(args, dict(os.environ), theirs.fileno())  # starts it
            assert zygote.pid is not None
            zygote.startup_timeout = 0  # the next fork() gives up before the answer comes
            with pytest.raises(TimeoutError):
                await zygote.fork(args, dict(os.environ), theirs.fileno())
            # the abandoned worker is forked, reported, and killed; the kept one lives on
            await asyncio.to_thread(wait_for, lambda: "launch was abandoned" in caplog.text)
            await asyncio.to_thread(wait_for, lambda: child_pids(zygote.pid) == {kept.pid})
            assert kept.returncode is None
            kept.kill()
            assert await asyncio.wait_for(kept.wait(), 10) == -signal.SIGKILL
            return zygote.pid, child_pids(zygote.pid)
        finally:
            await zygote.close()
            ours.close()
            theirs.close()

    zygote_pid, left = asyncio.run(abandon_one())
    assert left == set()
    assert not pid_alive(zygote_pid)


def test_a_zygote_that_could_not_start_for_want_of_descriptors_is_tried_again(monkeypatch):
    """EMFILE at the zygote's start (a slow-client flood holding descriptors) is not its
    end: the next fork starts it (any other failure keeps workers on fresh interpreters)."""
    real = socket.socketpair
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(*args, **kwargs)

    async def main() -> None:
        monkeypatch.setattr(zygote_module.socket, "socketpair", flaky)  # the loop has its own
        z = zygote_module.Zygote(startup_timeout=120)
        try:
            with pytest.raises(zygote_module.ZygoteError, match="Too many open files"):
                await z.fork([], {}, 0)
            assert not z._broken
            await z._start()  # what the next fork does first
            assert z.pid is not None and pid_alive(z.pid)
        finally:
            await z.close()

    asyncio.run(main())


def test_a_zygote_launched_before_the_loop_is_the_one_that_forks():
    """``modelserve start`` launches the zygote before its server imports (so torch's import
    runs beside them): the data plane's Zygote adopts that process rather than starting a
    second, and one never asked for a worker still ends with the server."""
    async def main() -> None:
        early = zygote_module.launch()
        z = zygote_module.Zygote(startup_timeout=120, early=early)
        try:
            await z._start()  # what the first fork does
            assert z.pid == early[0].pid
        finally:
            await z.close()
        assert early[0].returncode == 0

        unused = zygote_module.launch()
        await zygote_module.Zygote(startup_timeout=120, early=unused).close()
        assert unused[0].returncode is not None and not pid_alive(unused[0].pid)

    asyncio.run(main())


def test_start_launches_the_zygote_before_the_server_imports(make_server):
    log = make_server({}).log()
    # the server's first own line comes once its imports are done, as it starts listening
    assert log.index("worker zygote started") < log.index("modelserve.http: descriptor limit")
