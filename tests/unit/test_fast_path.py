"""modelserve.server.transport.torchserve.fast_path over ASGI (no socket): the predictions
paths answered in front of FastAPI give, byte for byte, what FastAPI's route would, errors
included; everything else still reaches FastAPI. And the frontend's heap is frozen once
start-up is done (modelserve.server.heap)."""

from __future__ import annotations

import gc

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from modelserve.errors import ModelNotFoundError
from modelserve.server import heap
from modelserve.server.transport.http.errors import install_error_handlers
from modelserve.server.transport.torchserve.fast_path import PredictionsFastPath

SEEN: list[tuple[str, str, dict]] = []


async def predictions(request: Request) -> Response:
    """Answers by model name: ok, a ModelServeError, a bug, a client gone."""
    params = request.path_params
    SEEN.append((request.scope["path"], request.method, dict(params)))
    name = params["model_name"]
    if name == "missing":
        raise ModelNotFoundError("Model not found: missing")
    if name == "broken":
        raise ZeroDivisionError("division by zero")
    if name == "gone":
        raise ClientDisconnect()
    body = await request.body()
    request.state.access = {"model": name}
    return Response(body + params.get("model_version", "-").encode(), status_code=201,
                    media_type="text/plain", headers={"x-request-id": "r1"})


def app() -> FastAPI:
    api = FastAPI()
    install_error_handlers(api)
    for path in ("/{model_name}", "/{model_name}/{model_version}",
                 "/{model_name}/{model_version}/{url_path:path}"):
        api.add_route("/predictions" + path, predictions, methods=["POST", "PUT"])

    @api.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    return api


def client(asgi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi, raise_app_exceptions=False),
                             base_url="http://t")


@pytest.mark.parametrize("method,path", [
    ("POST", "/predictions/m"), ("PUT", "/predictions/m/2.0"), ("POST", "/predictions/missing"),
    ("POST", "/predictions/broken"), ("POST", "/predictions/gone"),
    ("POST", "/predictions/m/2.0/v1/chat"), ("POST", "/predictions/m/"), ("GET", "/predictions/m"),
    ("POST", "/predictions"), ("GET", "/ping"), ("POST", "/predictions/a%20b"),
])
async def test_the_same_answer_as_fastapi_gives(method, path):
    plain = app()
    answers = []
    for asgi in (plain, PredictionsFastPath(plain, predictions)):
        async with client(asgi) as c:
            r = await c.request(method, path, content=b"x")
        answers.append((r.status_code, r.headers.get("content-type"), r.content,
                        r.headers.get("x-request-id")))
    assert answers[0] == answers[1]
    assert answers[0][0] != 500 or b"ZeroDivisionError" in answers[0][2]


async def test_only_the_plain_paths_skip_fastapi():
    plain = app()
    taken: list[str] = []

    async def counting(request: Request) -> Response:
        taken.append(request.scope["path"])
        return await predictions(request)

    async with client(PredictionsFastPath(plain, counting)) as c:
        for path in ("/predictions/m", "/predictions/m/1", "/predictions/m/1/x",
                     "/predictions/m/", "/v2/models/m/infer"):
            await c.post(path, content=b"{}")
    assert taken == ["/predictions/m", "/predictions/m/1"]  # the rest: FastAPI's routes


async def test_the_endpoint_sees_the_request_as_fastapi_would_give_it():
    SEEN.clear()
    plain = app()
    async with client(PredictionsFastPath(plain, predictions)) as c:
        r = await c.put("/predictions/a%20b/3", content=b"body")
    assert r.status_code == 201 and r.content == b"body3"
    assert SEEN == [("/predictions/a b/3", "PUT", {"model_name": "a b", "model_version": "3"})]


def test_settle_freezes_what_start_up_made():
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
