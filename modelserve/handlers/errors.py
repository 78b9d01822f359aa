"""Errors a handler raises (or returns in place of one request's result) to choose the status."""

from __future__ import annotations


class PredictionException(Exception):
    """TorchServe's ``ts.utils.util.PredictionException``: a message and an HTTP status."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"message : error_code => {self.message} : {self.error_code}"


class BadInputError(PredictionException):
    """The request's body is not what the model takes: answered 400 with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 400)
