"""TorchServe's listener keys, read into settings: the three addresses and TLS's switches.

``inference_address``, ``management_address`` and ``metrics_address`` (``http[s]://HOST[:PORT]``,
Connector.parse) set the ports and the host; an ``https`` address (Connector.isSsl) and
``enable_grpc_ssl`` (ModelServer's gRPC servers) say which listeners serve TLS
(``tls_listeners``). ``modelserve.ts_config`` calls ``map_listeners`` for every file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelserve.ts_unmapped import java_bool

__all__ = ["PORT_FIELDS", "TLS_SWITCHES", "map_listeners"]

PORT_FIELDS = {
    "inference_address": "inference_port",
    "management_address": "management_port",
    "metrics_address": "metrics_port",
}
# TorchServe's ports when an address names none (Connector.parse): (http, https).
_DEFAULT_PORTS = {
    "inference_address": (80, 443),
    "management_address": (8081, 8444),
    "metrics_address": (8082, 8445),
}
# What decides which listeners serve TLS besides the addresses (ModelServer: gRPC's switch).
TLS_SWITCHES = frozenset({"enable_grpc_ssl"})
_TLS_FILES = frozenset({"certificate_file", "private_key_file", "keystore"})
_ADDRESS = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+)(?::([0-9]+))?", re.IGNORECASE)
_TS_DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class _Address:
    secure: bool
    host: str
    port: int


def _parse_address(key: str, value: str) -> _Address:
    text = value.strip()
    if text.lower().startswith("unix:"):
        raise ValueError(f"{key}: Unix domain sockets are not supported; use http://HOST:PORT")
    match = _ADDRESS.fullmatch(text)
    if match is None:
        raise ValueError(f"{key}: expected http://HOST:PORT, got {value!r}")
    scheme, host, port = match.groups()
    secure = scheme.lower() == "https"
    number = int(port) if port else _DEFAULT_PORTS[key][secure]
    if not 0 < number < 65536:
        raise ValueError(f"{key}: port {number} is out of range")
    return _Address(secure, host.strip("[]"), number)


def _check_distinct_ports(addresses: dict[str, _Address]) -> None:
    seen: dict[int, str] = {}
    for key, address in addresses.items():
        if address.port in seen:
            raise ValueError(
                f"{seen[address.port]} and {key} share port {address.port}: TorchServe then "
                "serves both APIs on one port, modelserve needs a port per API"
            )
        seen[address.port] = key


def _choose_host(addresses: dict[str, _Address], warnings: list[str]) -> str | None:
    """The inference address's host: modelserve binds its three listeners to one host."""
    inference = addresses.get("inference_address")
    if inference is None:  # TorchServe's inference listener stays on its default host
        reference, follows = _TS_DEFAULT_HOST, "the host setting, as inference_address is unset"
    else:
        reference, follows = inference.host, f"inference_address ({inference.host})"
    for key, address in addresses.items():
        if address.host != reference:
            warnings.append(
                f"{key}: binds {address.host}, but modelserve binds all three listeners to "
                f"one host; it follows {follows}"
            )
    return None if inference is None else inference.host


def _tls_listeners(props: Mapping[str, str], addresses: dict[str, _Address]) -> list[str] | None:
    """The https addresses' listeners, and gRPC with enable_grpc_ssl=true. None (left to the
    other settings) unless the file has an https address or a TLS key: then it alone decides,
    as in TorchServe, where a certificate_file with only http addresses serves no TLS."""
    secure = any(address.secure for address in addresses.values())
    if not (secure or (TLS_SWITCHES | _TLS_FILES) & props.keys()):
        return None
    listeners = [PORT_FIELDS[key].removesuffix("_port")
                 for key, address in addresses.items() if address.secure]
    if java_bool(props.get("enable_grpc_ssl", "false")):
        listeners.append("grpc")
    return listeners


def map_listeners(props: Mapping[str, str], settings: dict[str, Any],
                  warnings: list[str]) -> None:
    """Set host, the ports and tls_listeners in ``settings`` from the file's ``props``."""
    addresses = {key: _parse_address(key, props[key]) for key in PORT_FIELDS if key in props}
    _check_distinct_ports(addresses)
    for key, address in addresses.items():
        settings[PORT_FIELDS[key]] = address.port
    host = _choose_host(addresses, warnings)
    if host is not None:
        settings["host"] = host
    listeners = _tls_listeners(props, addresses)
    if listeners is not None:
        settings["tls_listeners"] = listeners
