"""modelserve.server.transport.http.cors over ASGI (no socket): TorchServe's
NettyUtils.sendHttpResponse headers, preflights, and OPTIONS / left to the API description."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from modelserve.config import Settings
from modelserve.server.transport.http.cors import Cors, with_cors
from modelserve.server.transport.http.errors import add_api_description

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def app() -> FastAPI:
    api = FastAPI()
    add_api_description(api)

    @api.get("/ping")
    async def ping() -> JSONResponse:
        return JSONResponse({"status": "Healthy"})

    @api.get("/own")
    async def own() -> JSONResponse:
        return JSONResponse({}, headers={"Access-Control-Allow-Origin": "https://mine"})

    return api


def client(asgi) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")


def test_off_by_default_and_for_empty_values():
    inner = app()
    assert with_cors(inner, Settings()) is inner
    assert with_cors(inner, Settings(cors_allowed_origin="", cors_allowed_methods=" ")) is inner
    assert isinstance(with_cors(inner, Settings(cors_allowed_headers="X-A")), Cors)


async def test_headers_on_every_response_as_configured():
    settings = Settings(cors_allowed_origin="*", cors_allowed_methods=["GET", "POST"])
    async with client(with_cors(app(), settings)) as c:
        for response in (await c.get("/ping"), await c.get("/nowhere"),
                         await c.get("/ping", headers={"Origin": "https://elsewhere"})):
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers["access-control-allow-methods"] == "GET, POST"
            assert "access-control-allow-headers" not in response.headers
        # a header the response already has is kept (TorchServe: !headers.contains)
        assert (await c.get("/own")).headers.get_list("access-control-allow-origin") == [
            "https://mine"]


async def test_preflight_is_answered_and_options_root_stays_the_api_description():
    settings = Settings(cors_allowed_origin="https://app.example",
                        cors_allowed_headers="Authorization, Content-Type")
    async with client(with_cors(app(), settings)) as c:
        preflight = await c.options("/predictions/echo", headers=PREFLIGHT)
        assert preflight.status_code == 200 and preflight.content == b""
        assert preflight.headers["access-control-allow-headers"] == "Authorization, Content-Type"
        for headers in (PREFLIGHT, {}):
            root = await c.options("/", headers=headers)
            assert root.status_code == 200 and "paths" in root.json()
            assert root.headers["access-control-allow-origin"] == "https://app.example"
        plain = await c.options("/ping")  # not a preflight: the routes answer it, as before
        assert plain.status_code == 405
        assert plain.headers["access-control-allow-origin"] == "https://app.example"
    async with client(Cors(app(), [(b"access-control-allow-origin", b"*")],
                           describes_root=False)) as c:
        root = await c.options("/", headers=PREFLIGHT)
        assert root.status_code == 200 and root.content == b""
