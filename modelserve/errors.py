"""Exceptions that carry their HTTP status, and the one error body shape.

Every API answers errors as TorchServe does: ``{"code": int, "type": str, "message": str}``.
The ``type`` is TorchServe's exception name so existing clients that match on it keep working.
"""

from __future__ import annotations

import orjson


class ModelServeError(Exception):
    """Base class: an error with an HTTP status and a TorchServe-style type name."""

    status: int = 500
    type: str = "InternalServerException"
    headers: dict[str, str] | None = None  # extra response headers (e.g. Retry-After)

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def body(self) -> dict[str, object]:
        return {"code": self.status, "type": self.type, "message": self.message}

    @classmethod
    def from_body(cls, status: int, body: bytes) -> ModelServeError:
        """A worker's error answer as an exception: its ``message`` and ``type`` when the
        body has the error shape, else the whole body as the message."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            kind = doc.get("type")
            return cls(doc["message"], status=status, type=kind if isinstance(kind, str) else None)
        return cls(body.decode(errors="replace"), status=status)


class BadRequestError(ModelServeError):
    status = 400
    type = "BadRequestException"


class ModelNotFoundError(ModelServeError):
    status = 404
    type = "ModelNotFoundException"


class ConflictError(ModelServeError):
    status = 409
    type = "ConflictStatusException"


class RequestTooLargeError(ModelServeError):
    status = 413
    type = "RequestEntityTooLargeException"


class ServiceUnavailableError(ModelServeError):
    status = 503
    type = "ServiceUnavailableException"


class QueueFullError(ServiceUnavailableError):
    """Overload: the model's queue is full. Clients should come back after Retry-After."""

    headers = {"Retry-After": "1"}


class MethodNotAllowedError(ModelServeError):
    status = 405
    type = "MethodNotAllowedException"


class WorkerDiedError(ModelServeError):
    status = 503
    type = "WorkerDiedException"


class RequestTimeoutError(ModelServeError):
    status = 504
    type = "RequestTimeoutException"
