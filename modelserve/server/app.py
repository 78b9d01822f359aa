"""Run the listeners (inference, management, metrics; OIP v2 gRPC) on one event loop.

The listeners come up first, so /ping answers (Unhealthy) while the startup models load.
SIGINT/SIGTERM stop the listeners, then every worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from modelserve.config import Settings
from modelserve.server.access_log import AccessLog
from modelserve.server.dataplane import DataPlane
from modelserve.server.inference_api import create_inference_app
from modelserve.server.management_api import create_management_app
from modelserve.server.metrics import ServerMetrics
from modelserve.server.metrics_api import StatusCounter, create_metrics_app
from modelserve.server.v2.core import V2Core
from modelserve.server.v2.grpc_service import start_grpc_server

log = logging.getLogger("modelserve")


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process (three share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listener(app: Any, settings: Settings, port: int) -> _Listener:
    config = uvicorn.Config(
        app, host=settings.host, port=port, http="httptools", loop="none", lifespan="off",
        log_level=settings.log_level, access_log=False, server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    return _Listener(config)


async def run_server(settings: Settings,
                     on_ready: Callable[[Settings, list[str]], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    metrics = ServerMetrics()
    dataplane = DataPlane(settings, metrics)
    v2 = V2Core(dataplane)
    apps: list[tuple[Any, int]] = [
        (StatusCounter(create_inference_app(dataplane, settings, v2), metrics),
         settings.inference_port),
        (create_management_app(dataplane), settings.management_port),
        (create_metrics_app(metrics), settings.metrics_port),
    ]
    listeners = [
        _listener(AccessLog(app) if settings.access_log else app, settings, port)
        for app, port in apps
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(s.serve()) for s in listeners]
    grpc_server = None
    try:
        if settings.grpc_inference_port:
            try:
                grpc_server = await start_grpc_server(
                    v2, settings.host, settings.grpc_inference_port, settings.max_request_size,
                    settings.max_response_size)
            except OSError as exc:
                log.error("%s; stopping", exc)
                return 1
        while not all(s.started for s in listeners):
            if any(t.done() for t in tasks):
                log.error("a listener failed to start (port in use?); stopping")
                return 1
            await asyncio.sleep(0.02)
        loading = asyncio.create_task(dataplane.load_startup_models())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and on_ready is not None:
            on_ready(settings, loading.result())
        await stopped
        loading.cancel()
        log.info("shutting down")
        return 0
    finally:
        for s in listeners:
            s.should_exit = True
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        await asyncio.gather(*tasks, return_exceptions=True)
        await dataplane.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(settings: Settings,
        on_ready: Callable[[Settings, list[str]], None] | None = None) -> int:
    """Blocking entry point: uvloop when installed, else asyncio."""
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_server(settings, on_ready))
