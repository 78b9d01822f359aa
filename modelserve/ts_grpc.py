"""TorchServe's gRPC keys, read into settings: where its two gRPC APIs listen.

``grpc_inference_port`` and ``grpc_management_port`` (ConfigManager.getGRPCPort:
``Integer.parseInt``) set ``grpc_torchserve_inference_port`` and
``grpc_torchserve_management_port``; ``grpc_inference_address`` and
``grpc_management_address`` (getGRPCAddress: an IP address or host name, not a URL) set
``grpc_torchserve_host``. modelserve binds both services to one host, the inference address's,
and says so when the management address differs. ``enable_grpc_ssl`` is TLS's
(``modelserve.ts_listeners``). ``modelserve.ts_config`` calls ``map_grpc`` for every file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["GRPC_FIELDS", "map_grpc"]

_PORTS = {
    "grpc_inference_port": "grpc_torchserve_inference_port",
    "grpc_management_port": "grpc_torchserve_management_port",
}
_ADDRESSES = ("grpc_inference_address", "grpc_management_address")
GRPC_FIELDS = {**_PORTS, **dict.fromkeys(_ADDRESSES, "grpc_torchserve_host")}
_TS_DEFAULT_HOST = "127.0.0.1"  # ConfigManager.getGRPCAddress's default


def _port(key: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a port number, got {value!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"{key}: port {number} is out of range")
    return number


def _host(key: str, value: str) -> str:
    host = value.strip()
    if not host or "://" in host or "/" in host:
        raise ValueError(f"{key}: expected an IP address or host name (as 127.0.0.1 or "
                         f"0.0.0.0), got {value!r}")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def map_grpc(props: Mapping[str, str], settings: dict[str, Any], warnings: list[str]) -> None:
    """Set the two gRPC ports and ``grpc_torchserve_host`` in ``settings`` from ``props``."""
    for key, name in _PORTS.items():
        if key in props:
            settings[name] = _port(key, props[key])
            if settings[name] == 0:
                warnings.append(f"{key}=0: TorchServe would listen on a port the system "
                                "picks; here 0 turns that gRPC API off")
    hosts = {key: _host(key, props[key]) for key in _ADDRESSES if key in props}
    inference = hosts.get("grpc_inference_address")
    management = hosts.get("grpc_management_address")
    if inference is not None:
        settings["grpc_torchserve_host"] = inference
    if management is not None and management != (inference or _TS_DEFAULT_HOST):
        follows = (f"grpc_inference_address ({inference})" if inference is not None else
                   f"grpc_torchserve_host ({_TS_DEFAULT_HOST} unless config.yaml sets it), "
                   "as grpc_inference_address is unset")
        warnings.append(f"grpc_management_address: binds {management}, but modelserve binds "
                        f"both TorchServe gRPC APIs to one host; it follows {follows}")
