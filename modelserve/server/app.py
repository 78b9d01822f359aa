"""Run the listeners (inference, management, metrics; OIP v2 gRPC) on one event loop.

The listeners come up first, so /ping answers (Unhealthy) while the startup models load.
SIGINT/SIGTERM drain: readiness turns false (/ping 503 "Draining"), the listeners keep
accepting for ``drain_delay`` seconds, then stop accepting; in-flight requests get up to
``shutdown_grace_period`` seconds to finish; then every worker process is stopped.
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
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.observability.metrics import ServerMetrics
from modelserve.server.transport.auth import KeyStore, TokenAuth
from modelserve.server.transport.http.access_log import AccessLog
from modelserve.server.transport.http.disconnect import DisconnectProbe
from modelserve.server.transport.http.limits import BodyLimit
from modelserve.server.transport.http.paths import TrailingSlash
from modelserve.server.transport.torchserve.inference import create_inference_app
from modelserve.server.transport.torchserve.management import create_management_app
from modelserve.server.transport.torchserve.metrics import StatusCounter, create_metrics_app
from modelserve.server.transport.v2.core import V2Core
from modelserve.server.transport.v2.grpc_auth import TokenInterceptor
from modelserve.server.transport.v2.grpc_service import start_grpc_server

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
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_period)),
    )
    return _Listener(config)


async def _serve(listener: _Listener) -> None:
    """uvicorn exits the process (``sys.exit(3)``) when it cannot bind: here that ends only
    this task, and ``run_server`` reports it in one line."""
    try:
        await listener.serve()
    except SystemExit:
        pass


async def run_server(settings: Settings,
                     on_ready: Callable[[Settings, list[str]], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    metrics = ServerMetrics()
    dataplane = DataPlane(settings, metrics)
    v2 = V2Core(dataplane)
    inference: Any = create_inference_app(dataplane, settings, v2)
    management: Any = BodyLimit(TrailingSlash(create_management_app(dataplane)),
                                settings.max_request_size)
    keys: KeyStore | None = None
    if not settings.disable_token_auth:
        try:
            keys = KeyStore(settings.key_path)
        except (OSError, ValueError) as exc:
            log.error("token authorization: %s", exc)
            return 2
        inference = TokenAuth(inference, keys, "inference")
        management = TokenAuth(management, keys, "management")
    else:
        log.warning("token authorization is disabled: anyone who can reach the ports can "
                    "call every API")
    apps: list[tuple[Any, int]] = [
        (DisconnectProbe(StatusCounter(inference, metrics)), settings.inference_port),
        (management, settings.management_port),
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

    tasks = [asyncio.create_task(_serve(s)) for s in listeners]
    grpc_server = None
    deadline = loop.time()  # when in-flight work must be done, set at the stop signal
    try:
        if settings.grpc_inference_port:
            try:
                grpc_server = await start_grpc_server(
                    v2, settings.host, settings.grpc_inference_port, settings.max_request_size,
                    settings.max_response_size,
                    [TokenInterceptor(keys)] if keys is not None else None)
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
        dataplane.draining = True
        deadline = loop.time() + settings.drain_delay + settings.shutdown_grace_period
        log.info("draining: readiness is false; in-flight requests get %gs to finish",
                 settings.shutdown_grace_period)
        if settings.drain_delay:
            await asyncio.sleep(settings.drain_delay)
        return 0
    finally:
        dataplane.draining = True
        for s in listeners:
            s.should_exit = True
        if grpc_server is not None:
            # in-flight calls get the same deadline as HTTP requests (workers still run)
            await grpc_server.stop(grace=max(0.0, deadline - loop.time()))
        await asyncio.gather(*tasks, return_exceptions=True)
        await dataplane.shutdown(grace=max(0.0, deadline - loop.time()))
        log.info("stopped")
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
