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


# What a request with no payload field was, and what to send instead (curl's defaults trip
# people up: -d and --data-binary send application/x-www-form-urlencoded).
NO_PAYLOAD = ("the request has no 'data' or 'body' field: a multipart or urlencoded form "
              "whose fields are named otherwise")


def missing_payload(what: str, example: str) -> BadInputError:
    """The 400 for a request whose payload is not there, saying what to send."""
    return BadInputError(f"expected {what}, but {NO_PAYLOAD}; send the {example} as the whole "
                         "body (e.g. curl --data-binary @FILE -H 'Content-Type: "
                         "application/octet-stream', or curl -T FILE), or as a form field "
                         "named 'data'")
