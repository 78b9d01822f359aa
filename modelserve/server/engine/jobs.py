"""One inference request on its way through batcher and worker, and its result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modelserve import ipc
from modelserve.errors import BadRequestError, ModelServeError

# the current request's "has my client left?" (None: not known for this transport)
CLIENT_GONE: ContextVar[Callable[[], bool] | None] = ContextVar("client_gone", default=None)


class ClientGoneError(ModelServeError):
    """The client disconnected before its request reached a worker (nginx's 499: nobody
    reads it; it shows in the access log and in Requests4XX)."""

    status = 499
    type = "ClientClosedRequest"


class Result(NamedTuple):
    """A worker's answer to one request: what goes back on the wire, and the size of the
    batch it was computed in (for the access log)."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]
    batch_size: int = 1
    tensors: list[list[Any]] | None = None  # OIP v2: [[name, datatype, shape, raw], ...]


@dataclass(slots=True, eq=False)
class Job:
    request_id: str
    content_type: str
    body: bytes | None  # None: a continuous batch's request after its first step
    headers: dict[str, str]
    future: asyncio.Future[Result]
    arrival: float = field(default_factory=time.perf_counter)
    dispatched: float = 0.0
    v2: dict[str, Any] | None = None  # an OIP v2 request's tensors (InferRequest.wire())
    retried: bool = False  # set when its worker died and it was sent to another one
    gone: Callable[[], bool] | None = None  # true once the HTTP client disconnected
    sequence: str = ""  # its sequence's id, for a stateful model (engine/sequences.py)

    def wire(self) -> list[object]:
        """The job as the worker reads it (see modelserve.ipc)."""
        if self.v2 is not None:
            return [self.request_id, self.content_type, self.body, self.headers, self.v2]
        return [self.request_id, self.content_type, self.body, self.headers]

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def resolve(self, result: Result) -> None:
        if not self.future.done():
            self.future.set_result(result)


def infer_frame(batch_id: int, jobs: list[Job]) -> bytes:
    """The ``infer`` frame of a batch (see modelserve.ipc)."""
    return ipc.encode({"op": "infer", "id": batch_id, "reqs": [job.wire() for job in jobs]})


def encodable(job: Job) -> bool:
    """Whether the job fits in a frame; if not, it is failed with a 400."""
    try:
        ipc.encode({"reqs": [job.wire()]})
    except ipc.ENCODE_ERRORS as exc:
        job.fail(BadRequestError(f"request cannot be passed to the worker: {exc}"))
        return False
    return True
