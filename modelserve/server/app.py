"""Run the listeners (inference, management, metrics; OIP v2 gRPC, TorchServe's gRPC
inference and management) on one event loop.

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
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from modelserve.config import Settings
from modelserve.server import heap
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.workflows import Workflows
from modelserve.server.engine.zygote import Launched
from modelserve.server.observability import metrics_log
from modelserve.server.observability.metrics import ServerMetrics
from modelserve.server.transport import tls
from modelserve.server.transport.auth import KeyStore, TokenAuth
from modelserve.server.transport.http.access_log import AccessLog
from modelserve.server.transport.http.connections import ConnectionMetrics, open_table
from modelserve.server.transport.http.cors import with_cors
from modelserve.server.transport.http.deadlines import Guard, guarded_protocol
from modelserve.server.transport.http.disconnect import DisconnectProbe
from modelserve.server.transport.http.limits import BodyLimit
from modelserve.server.transport.http.paths import TrailingSlash
from modelserve.server.transport.torchserve.fast_path import PredictionsFastPath
from modelserve.server.transport.torchserve.inference import create_inference_app
from modelserve.server.transport.torchserve.management import create_management_app
from modelserve.server.transport.torchserve.metrics import StatusCounter, create_metrics_app
from modelserve.server.transport.torchserve.workflows import (
    add_workflow_inference_routes,
    add_workflow_management_routes,
)
from modelserve.server.transport.v2.core import V2Core
from modelserve.server.transport.v2.grpc_auth import TokenInterceptor
from modelserve.server.transport.v2.grpc_service import start_grpc_server

log = logging.getLogger("modelserve")


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process (three share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listener(app: Any, settings: Settings, port: int,
              context: ssl.SSLContext | None = None, http: Any = "httptools") -> _Listener:
    """``context``: serve TLS with it (modelserve.server.transport.tls), else plain HTTP;
    ``http``: uvicorn's protocol (a class: transport.http.deadlines)."""
    config = uvicorn.Config(
        app, host=settings.host, port=port, http=http, loop="none", lifespan="off",
        log_level=settings.log_level, access_log=False, server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_period)),
        ssl_context_factory=None if context is None else (lambda _config, _default: context),
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
                     on_ready: Callable[[Settings, list[str]], None] | None = None,
                     zygote: Launched | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code. ``zygote``: the worker
    zygote, if the caller launched it already."""
    try:
        metrics = ServerMetrics(metrics_log.from_settings(settings))
    except ValueError as exc:  # a metrics_config that cannot be read
        log.error("%s", exc)
        return 2
    try:  # TLS: a file that cannot be used stops the start in one line, before any bind
        contexts = {name: tls.ssl_context(settings, name)
                    for name in ("inference", "management", "metrics")}
        grpc_credentials = tls.server_credentials(settings)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    dataplane = DataPlane(settings, metrics, zygote)
    v2 = V2Core(dataplane)
    workflows = Workflows(dataplane)  # TorchServe's /workflows and /wfpredict
    inference: Any = create_inference_app(dataplane, settings, v2)
    add_workflow_inference_routes(inference, workflows, settings)
    inference = PredictionsFastPath(inference, inference.state.predictions)
    management_app = create_management_app(dataplane)
    add_workflow_management_routes(management_app, workflows)
    management: Any = BodyLimit(TrailingSlash(management_app),
                                settings.max_request_size)
    keys: KeyStore | None = None
    if not settings.disable_token_auth:
        try:
            keys = KeyStore(settings.key_path, settings.token_expiration_min)
        except (OSError, ValueError) as exc:
            log.error("token authorization: %s", exc)
            return 2
        inference = TokenAuth(inference, keys, "inference", settings.auth_failure_status)
        management = TokenAuth(management, keys, "management", settings.auth_failure_status)
    else:
        log.warning("token authorization is disabled: anyone who can reach the ports can "
                    "call every API")
    # CORS outside token authorization: a 401 carries the headers, a preflight needs no key
    inference, management = with_cors(inference, settings), with_cors(management, settings)
    apps: list[tuple[Any, int, str]] = [
        (DisconnectProbe(StatusCounter(inference, metrics)), settings.inference_port,
         "inference"),
        (management, settings.management_port, "management"),
        (with_cors(create_metrics_app(metrics), settings, describes_root=False),
         settings.metrics_port, "metrics"),
    ]
    table = open_table(settings.max_connections)  # slow clients: connections.py, deadlines.py
    metrics.registry.register(ConnectionMetrics(table))
    listeners = [
        _listener(AccessLog(app, settings.access_log_format) if settings.access_log else app,
                  settings, port, contexts[name], guarded_protocol("httptools", Guard(
                      name, table, settings.request_header_timeout,
                      settings.request_body_timeout,
                      settings.access_log_format if settings.access_log else None)))
        for app, port, name in apps
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(_serve(s)) for s in listeners]
    host_metrics = None  # TorchServe's system metrics, in the metrics log
    if metrics.log is not None and not settings.disable_system_metrics:
        host_metrics = asyncio.create_task(metrics.log.run_system(settings.metric_time_interval))
    grpc_server = None
    ts_grpc: list[Any] = []  # TorchServe's gRPC inference and management servers
    deadline = loop.time()  # when in-flight work must be done, set at the stop signal
    try:
        if settings.grpc_inference_port:
            try:
                grpc_server = await start_grpc_server(
                    v2, settings, [TokenInterceptor(keys)] if keys is not None else None,
                    grpc_credentials)
            except OSError as exc:
                log.error("%s; stopping", exc)
                return 1
        if settings.grpc_torchserve_inference_port or settings.grpc_torchserve_management_port:
            # imported only when served: its generated modules register TorchServe's proto
            # names process-wide, which a process that never serves them should not pay for
            from modelserve.server.transport.torchserve.grpc_server import start_torchserve_grpc

            try:
                ts_grpc = await start_torchserve_grpc(dataplane, keys, grpc_credentials)
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
        if loading.done():
            heap.settle()  # start-up's objects out of the collector's walks (server/heap.py)
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
        if host_metrics is not None:
            host_metrics.cancel()
        for s in listeners:
            s.should_exit = True
        if grpc_server is not None:
            # in-flight calls get the same deadline as HTTP requests (workers still run)
            await grpc_server.stop(grace=max(0.0, deadline - loop.time()))
        await asyncio.gather(*(s.stop(grace=max(0.0, deadline - loop.time())) for s in ts_grpc))
        await asyncio.gather(*tasks, return_exceptions=True)
        await dataplane.shutdown(grace=max(0.0, deadline - loop.time()))
        workflows.close()
        log.info("stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(settings: Settings,
        on_ready: Callable[[Settings, list[str]], None] | None = None,
        zygote: Launched | None = None) -> int:
    """Blocking entry point: uvloop when installed, else asyncio."""
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_server(settings, on_ready, zygote))
