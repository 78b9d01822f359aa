"""OpenAPI additions: the inference routes (plain Starlette routes, so FastAPI does not see
them) and the bearer-token scheme. Built once, when the description is first asked for; the
request path never touches it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_ERROR = {"description": "Error: {code, type, message}",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERROR_SCHEMA = {
    "type": "object", "required": ["code", "type", "message"],
    "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                   "message": {"type": "string"}},
}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _inference_operation(kind: str, versioned: bool, method: str) -> dict[str, Any]:
    what = "explain_handle" if kind == "explanations" else "handle"
    params = [_path_param("model_name")] + ([_path_param("model_version")] if versioned else [])
    return {
        "summary": f"Run the model's {what} on the body "
                   f"({'one version' if versioned else 'default version'})",
        "operationId": f"{kind}_{method}{'_version' if versioned else ''}",
        "parameters": params,
        "requestBody": {"required": False, "content": {
            "application/json": {"schema": {}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }},
        "responses": {
            "200": {"description": "The handler's output (JSON, text or bytes)"},
            **{str(code): _ERROR for code in (400, 404, 413, 501, 503, 504)},
        },
    }


def document_inference_routes(app: FastAPI) -> None:
    """Add /predictions and /explanations to the app's OpenAPI description."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        paths = schema.setdefault("paths", {})
        if "/predictions/{model_name}" not in paths:
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = \
                _ERROR_SCHEMA
            for kind in ("predictions", "explanations"):
                for versioned in (False, True):
                    path = f"/{kind}/{{model_name}}" + ("/{model_version}" if versioned else "")
                    paths[path] = {m: _inference_operation(kind, versioned, m)
                                   for m in ("post", "put")}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_bearer_auth(app: FastAPI) -> None:
    """Every operation needs ``Authorization: Bearer KEY`` (token auth on)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        schema = base()
        components = schema.setdefault("components", {})
        if "securitySchemes" not in components:
            components["securitySchemes"] = {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "The key from key_file.json (`modelserve key inference|"
                               "management`)"}}
            schema["security"] = [{"bearerAuth": []}]
            ping = schema.get("paths", {}).get("/ping", {}).get("get")
            if ping is not None:
                ping["security"] = []  # probes need no key
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
