"""Whether the HTTP client of a queued request is still waiting for its answer.

uvicorn does not cancel a request's task when its client disconnects: it marks the request's
cycle ``disconnected`` and answers ``http.disconnect`` on the next ``receive()``. Awaiting that
would cost a task per request; reading the flag costs nothing. So this middleware hands the
request's own probe to the data plane (a context variable: the request's task is the one that
submits its job), and the batcher reads it when it takes a queued request off the queue: a
client that left gets no model time, so under overload the queue drains to the clients that
still wait. gRPC needs none of this: a cancelled call cancels its task, and with it the job.
"""

from __future__ import annotations

from typing import Any

from modelserve.server.engine.jobs import CLIENT_GONE


class DisconnectProbe:
    """Pure ASGI middleware: sets :data:`CLIENT_GONE` for each HTTP request when the server
    (uvicorn) exposes its request cycle's ``disconnected`` flag; otherwise leaves it unset."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        cycle = getattr(receive, "__self__", None)
        if scope["type"] == "http" and isinstance(getattr(cycle, "disconnected", None), bool):
            CLIENT_GONE.set(lambda: cycle.disconnected)  # type: ignore[union-attr]
        await self.app(scope, receive, send)
