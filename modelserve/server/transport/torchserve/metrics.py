"""Metrics API (port 8082): ``GET /metrics`` in Prometheus text format, and the status counter."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST

from modelserve import __version__
from modelserve.server.observability.metrics import ServerMetrics


def create_metrics_app(metrics: ServerMetrics) -> FastAPI:
    app = FastAPI(title="modelserve metrics API", version=__version__,
                  docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def scrape(names: list[str] = Query([], alias="name[]")) -> Response:
        """Every metric in Prometheus text exposition format 0.0.4; ``name[]=...`` (repeated)
        keeps only those (PrometheusMetricsRequestHandler)."""
        return Response(metrics.render(names), media_type=CONTENT_TYPE_LATEST)

    return app


class StatusCounter:
    """Pure ASGI middleware counting responses by status class (TorchServe's Requests2XX…)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observe = self.metrics.observe_status

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
