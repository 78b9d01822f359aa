"""Query values read as TorchServe's frontend reads them (``strict_params: false``).

TorchServe's ``NettyUtils.getIntParameter`` is ``Integer.parseInt`` with a fallback: a value
that is absent, empty (``limit=``) or not a 32-bit decimal integer (``dd``, ``nan``, ``1.0``)
is the parameter's default, and negative numbers pass. Booleans are
``Boolean.parseBoolean``: true only for ``true`` in any case, so ``synchronous=-1`` or
``=Nan`` is false. ``ApiUtils`` and ``RegisterModelRequest`` then treat the sentinels
(``batch_size`` -1, ``max_batch_delay`` -100, timeouts -1, ``initial_workers`` <= 0) as "use
the default". Scripts written against TorchServe send such values; under the TorchServe
personality they get TorchServe's answers instead of modelserve's strict 400s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import ValidationError

from modelserve.errors import BadRequestError, ModelNotFoundError
from modelserve.server.engine.registration import RegisterRequest

_JAVA_INT = re.compile(r"[+-]?[0-9]+")


def java_int(params: Mapping[str, str], key: str, default: int | None) -> int | None:
    """``Integer.parseInt`` of the value, or ``default`` when absent or unparsable."""
    value = params.get(key)
    if value is None or not _JAVA_INT.fullmatch(value):
        return default
    number = int(value)
    return number if -(2**31) <= number < 2**31 else default


def java_bool(params: Mapping[str, str], key: str, default: bool) -> bool:
    """``Boolean.parseBoolean``: true only for "true", whatever its case."""
    value = params.get(key)
    return default if value is None else value.lower() == "true"


def _positive(value: int | None) -> int | None:
    """TorchServe's "not given" sentinels and non-positive values: the default."""
    return value if value is not None and value > 0 else None


def register_request(params: Mapping[str, str]) -> RegisterRequest:
    """``POST /models`` query parameters as ``RegisterModelRequest`` reads them."""
    url = params.get("url")
    if url == "":  # ModelArchive.downloadModel: an empty url is a missing model, not a 400
        raise ModelNotFoundError("Model not found: the url is empty (name an archive in the "
                                 "model store or a URL)")
    workers = java_int(params, "initial_workers", None)
    delay = java_int(params, "max_batch_delay", None)
    startup = java_int(params, "startup_timeout", None)
    if workers is not None and workers > 0 and startup is not None and startup <= 0:
        # TorchServe polls the load for 0 s: every worker fails, 500, the model is dropped
        raise BadRequestError(f"startup_timeout={startup} gives the {workers} initial "
                              "worker(s) no time to load")
    values = {
        "url": url or "",  # absent: "Parameter url is required." (400), as TorchServe says
        "model_name": params.get("model_name") or None,
        "handler": params.get("handler") or None,
        "runtime": params.get("runtime"),
        "batch_size": _positive(java_int(params, "batch_size", None)),
        "max_batch_delay": delay if delay is not None and delay >= 0 else None,
        "initial_workers": None if workers is None else max(workers, 0),
        "response_timeout": _positive(java_int(params, "response_timeout", None)),
        "startup_timeout": _positive(startup),
        "synchronous": java_bool(params, "synchronous", True),
    }
    try:
        return RegisterRequest.model_validate(values)
    except ValidationError as exc:  # e.g. a model name that could never be served
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(f"invalid registration: {problems}") from None


def scale_args(params: Mapping[str, str]) -> tuple[int, int, bool]:
    """``PUT /models/{name}``: (min_worker, max_worker, synchronous), TorchServe's defaults:
    min 1, max = min, asynchronous."""
    low = java_int(params, "min_worker", 1)
    assert low is not None
    high = java_int(params, "max_worker", low)
    assert high is not None
    return low, high, java_bool(params, "synchronous", False)


def page_args(params: Mapping[str, str]) -> tuple[int, int]:
    """``GET /models``: (limit, next_page_token) as ``ApiUtils.getModelList`` clamps them:
    a limit outside 0..100 is 100, a negative token 0."""
    limit = java_int(params, "limit", 100)
    token = java_int(params, "next_page_token", 0)
    assert limit is not None and token is not None
    return (100 if limit > 100 or limit < 0 else limit), max(token, 0)
