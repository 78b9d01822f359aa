"""CORS over real loopback listeners, with the requests a browser sends.

TorchServe's sources: NettyUtils.sendHttpResponse adds cors_allowed_origin,
cors_allowed_methods and cors_allowed_headers, when set, to every response (errors
included) of every HTTP listener; ApiDescriptionRequestHandler answers OPTIONS / with the
API description; docs/configuration.md "Configure Cross-Origin Resource Sharing"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port

ORIGIN = "https://app.example"
HEADERS = {"access-control-allow-origin": ORIGIN,
           "access-control-allow-methods": "GET, POST, OPTIONS",
           "access-control-allow-headers": "Authorization, Content-Type"}
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def cors_of(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.fixture(scope="module")
def cors_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """config.yaml's keys (a list for the methods), token authorization on."""
    srv = Server(tmp_path_factory.mktemp("cors"), model_store, ["echo.mar"], auth=True,
                 extra_config={"cors_allowed_origin": ORIGIN,
                               "cors_allowed_methods": ["GET", "POST", "OPTIONS"],
                               "cors_allowed_headers": "Authorization, Content-Type"})
    srv.start()
    yield srv
    assert not srv.stop()


def key(srv: Server, kind: str) -> dict[str, str]:
    keys = json.loads((srv.root / "work" / "key_file.json").read_text())
    return {"Authorization": f"Bearer {keys[kind]['key']}", "Origin": ORIGIN}


def test_preflights_are_answered_on_every_listener_without_a_key(cors_server):
    """A browser's preflight carries no Authorization header: answered 200 with the headers
    before token authorization (TorchServe routes it, and answers 401 there)."""
    for url in (f"{cors_server.inference}/predictions/echo", f"{cors_server.management}/models",
                f"{cors_server.metrics}/metrics", f"{cors_server.inference}/v2/models/echo/infer"):
        response = httpx.options(url, headers=PREFLIGHT)
        assert response.status_code == 200, url
        assert cors_of(response) == HEADERS, url


def test_every_response_carries_the_headers_errors_included(cors_server):
    """sendHttpResponse sets them on every answer, whatever the Origin (or none)."""
    answer = httpx.post(f"{cors_server.inference}/predictions/echo", json={"a": 1},
                        headers=key(cors_server, "inference"))
    assert answer.status_code == 200 and cors_of(answer) == HEADERS
    denied = httpx.post(f"{cors_server.inference}/predictions/echo", json={"a": 1},
                        headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and cors_of(denied) == HEADERS
    missing = httpx.get(f"{cors_server.management}/models/nope",
                        headers=key(cors_server, "management"))
    assert missing.status_code == 404 and cors_of(missing) == HEADERS
    for response in (httpx.get(f"{cors_server.inference}/ping"),
                     httpx.get(f"{cors_server.metrics}/metrics",
                               headers={"Origin": "https://other.example"})):
        assert response.status_code == 200 and cors_of(response) == HEADERS


def test_options_root_is_still_the_api_description(cors_server):
    """ApiDescriptionRequestHandler: OPTIONS / is the API description, preflight or not."""
    for base in (cors_server.inference, cors_server.management):
        for headers in ({}, PREFLIGHT):
            response = httpx.options(f"{base}/", headers=headers)
            assert response.status_code == 200
            assert "openapi" in response.json() and cors_of(response) == HEADERS


def test_torchserve_keys(model_store, tmp_path):
    """docs/configuration.md's example keys in a config.properties: each header as written;
    cors_allowed_headers unset sends none."""
    server = Server(tmp_path, model_store, [])
    properties = tmp_path / "config.properties"
    properties.write_text("cors_allowed_origin=*\ncors_allowed_methods=GET, POST, PUT, OPTIONS\n"
                          f"grpc_inference_port={free_port()}\n"
                          f"grpc_management_port={free_port()}\n")
    server.extra_args = ["--ts-config", str(properties)]
    server.start()
    try:
        ping = httpx.get(f"{server.inference}/ping", headers={"Origin": ORIGIN})
        assert cors_of(ping) == {"access-control-allow-origin": "*",
                                 "access-control-allow-methods": "GET, POST, PUT, OPTIONS"}
        preflight = httpx.options(f"{server.management}/models", headers=PREFLIGHT)
        assert preflight.status_code == 200 and cors_of(preflight) == cors_of(ping)
    finally:
        assert not server.stop()
