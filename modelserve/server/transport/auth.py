"""Token authorization (TorchServe 0.11+'s, on by default): bearer keys from a 0600 key file.

Three keys live in ``key_file.json`` (TorchServe's shape): ``inference`` for the inference
port, ``management`` for the management port, and ``API``, which only rotates the other two
(``GET /token?type=inference|management`` on the management port). A request without the
right ``Authorization: Bearer KEY`` gets 401 with the usual error body.

The check is a pure ASGI middleware: one header scan and one ``hmac.compare_digest`` per
request. Open paths (``/ping``, the API description) skip it; ``/metrics`` is never wrapped.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from modelserve.atomic import write_atomic
from modelserve.server.transport.http.errors import error_response
from modelserve.server.transport.http.responses import JSONResponse

log = logging.getLogger("modelserve.auth")

KEY_TYPES = ("inference", "management", "API")
ROTATABLE = ("inference", "management")
INVALID_MESSAGE = ("Token Authorization failed. Token either incorrect, expired, or not "
                   "provided correctly")
# Paths any client may read: probes, and TorchServe's API description (which also needs none).
OPEN_PATHS = frozenset({"/ping", "/api-description"})


def new_key() -> str:
    """32 random bytes, base64url (TorchServe uses 6; that is too few to resist guessing)."""
    return secrets.token_urlsafe(32)


class KeyStore:
    """The three keys, kept in ``path`` (created owner-only at first start, reused after)."""

    def __init__(self, path: Path, expiration_min: float | None = None) -> None:
        self.path = path
        self.expiration_s = expiration_min * 60 if expiration_min else None
        self._expires: dict[str, float] = {}  # key type -> when it stops working (epoch s)
        self.keys: dict[str, str] = {}
        self._load_or_create()
        if self.expiration_s is not None:  # TorchServe: counted from the server's start
            self._expires = {t: time.time() + self.expiration_s for t in ROTATABLE}
            self._write()

    def _load_or_create(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            keys = {t: data[t]["key"] for t in KEY_TYPES}
            if not all(isinstance(k, str) and len(k) >= 8 for k in keys.values()):
                raise ValueError("keys must be strings of 8 characters or more")
        except FileNotFoundError:
            self.keys = {t: new_key() for t in KEY_TYPES}
            self._write()
            log.info("token authorization: keys generated in %s", self.path)
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable key file {self.path}: {exc}; delete it to get new "
                             "keys") from None
        self.keys = keys
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            try:
                os.chmod(self.path, 0o600)
                log.warning("key file %s was readable by others (mode %o); set to 0600",
                            self.path, mode)
            except OSError as exc:  # e.g. a read-only mounted secret
                log.warning("key file %s is readable by others (mode %o) and cannot be "
                            "changed: %s", self.path, mode, exc)
        log.info("token authorization: keys read from %s", self.path)

    def _write(self, keys: dict[str, str] | None = None,
               expires: dict[str, float] | None = None) -> None:
        """Atomically, and never readable by anyone but the owner, even for an instant."""
        keys = keys or self.keys
        body: dict[str, dict[str, str]] = {t: {"key": keys[t]} for t in KEY_TYPES}
        expires = self._expires if expires is None else expires
        for key_type, deadline in expires.items():  # TorchServe's field, an ISO instant
            body[key_type]["expiration time"] = datetime.fromtimestamp(
                deadline, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        write_atomic(self.path, json.dumps(body, indent=2).encode(), 0o600)

    @property
    def keys(self) -> dict[str, str]:
        return self._keys

    @keys.setter
    def keys(self, keys: dict[str, str]) -> None:
        """Also the header each key is sent in, built once rather than per request."""
        self._keys = keys
        self._headers = {t: b"Bearer " + k.encode() for t, k in keys.items()}

    def check(self, key_type: str, header: bytes | None) -> bool:
        if header is None or not hmac.compare_digest(header, self._headers[key_type]):
            return False
        expires = self._expires.get(key_type)
        return expires is None or time.time() < expires

    def rotate(self, key_type: str) -> str:
        """A new key of ``key_type``; the old one stops working once the file is written."""
        keys = {**self.keys, key_type: new_key()}
        expires = dict(self._expires)
        if self.expiration_s is not None:
            expires[key_type] = time.time() + self.expiration_s
        self._write(keys, expires)  # raises OSError (a read-only secret) before any change
        self.keys, self._expires = keys, expires
        log.info("token authorization: %s key rotated", key_type)
        return self.keys[key_type]


def _authorization(scope: dict[str, Any]) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


class TokenAuth:
    """ASGI middleware: requests need ``Authorization: Bearer <key_type key>``."""

    def __init__(self, app: Any, keys: KeyStore, key_type: str, status: int = 401) -> None:
        self.app = app
        self.keys = keys
        self.key_type = key_type
        self.status = status  # TorchServe answers 400

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN_PATHS or (path == "/" and scope["method"] == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        header = _authorization(scope)
        if self.key_type == "management" and path == "/token":
            await self._token(scope, header)(scope, receive, send)
            return
        if self.keys.check(self.key_type, header):
            await self.app(scope, receive, send)
            return
        refusal = error_response(self.status, "InvalidKeyException", INVALID_MESSAGE,
                                 {"www-authenticate": 'Bearer realm="modelserve"'}
                                 if self.status == 401 else None,
                                 # OIP v2 clients (tritonclient, perf_analyzer) read "error"
                                 oip=path.startswith("/v2/") or path == "/v2")
        await refusal(scope, receive, send)

    def _token(self, scope: dict[str, Any], header: bytes | None) -> JSONResponse:
        """TorchServe's ``GET /token?type=``: the API key rotates one of the other two."""
        if not self.keys.check("API", header):
            return error_response(self.status, "InvalidKeyException", INVALID_MESSAGE)
        kind = parse_qs(scope.get("query_string", b"").decode()).get("type", [""])[0]
        if scope["method"] != "GET" or kind not in ROTATABLE:
            return error_response(400, "BadRequestException",
                                  "GET /token?type=inference|management")
        try:
            key = self.keys.rotate(kind)
        except OSError as exc:
            return error_response(500, "InternalServerException",
                                  f"cannot write the key file: {exc}")
        return JSONResponse({kind: {"key": key}})
