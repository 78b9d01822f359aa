"""TorchServe's config.properties, read into modelserve settings.

A deployment moving from TorchServe brings its config.properties. ``read_ts_config`` maps every
key that has an equivalent here onto a field of ``modelserve.config.Settings`` and reports, key
by key, what it does not honour, so that no setting is lost without a word. Only keys present
in the file become settings; the caller layers them (flags > env > ts-config > config.yaml >
defaults).

Each entry of ``TsConfig.warnings`` names its key first. ``"KEY: ignored, ..."`` entries are
informational: the key has no effect here and none is needed. ``"KEY...: not supported, ..."``
entries mean TorchServe would behave differently; ``"KEY: unknown TorchServe key, ..."``
entries are probably typos. Other entries explain how a mapped value was read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserve.config import ModelConfig, Settings

__all__ = ["TsConfig", "parse_properties", "read_ts_config"]

# -- Java .properties syntax ----------------------------------------------------------------

_WHITESPACE = " \t\f"
_NEWLINE = re.compile(r"\r\n|\r|\n")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|u|.|$)", re.DOTALL)
_ESCAPED_CHARS = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
# TorchServe's own syntax is $$VAR$$ (ConfigManager.resolveEnvVarVals); ${VAR} is accepted too.
_ENV_REFERENCE = re.compile(
    r"\$\$([A-Za-z_][A-Za-z0-9_]*)\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
)


def _odd_backslashes(text: str) -> bool:
    """True when ``text`` ends with an unescaped backslash."""
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def _logical_lines(text: str) -> Iterator[str]:
    """Join continued lines; skip blank and comment lines (``#`` or ``!`` first).

    As in Java, a continuation line loses its leading whitespace and is never a comment, and
    the backslash must end the line (``\\ `` before the line end is an escaped space).
    """
    parts: list[str] = []
    for natural in _NEWLINE.split(text):
        line = natural.lstrip(_WHITESPACE)
        if not parts and (not line or line[0] in "#!"):
            continue
        if _odd_backslashes(line):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield "".join(parts)
        parts = []
    if parts:
        yield "".join(parts)


def _split_key_value(line: str) -> tuple[str, str]:
    """Key up to the first unescaped ``=``, ``:`` or whitespace; the value after it."""
    i = 0
    while i < len(line) and line[i] not in "=:" + _WHITESPACE:
        i += 2 if line[i] == "\\" else 1
    key, separator = line[:i], line[i : i + 1]
    value = line[i + 1 :].lstrip(_WHITESPACE)
    if separator in _WHITESPACE and value[:1] in ("=", ":"):
        value = value[1:].lstrip(_WHITESPACE)
    return key, _trim_end(value)


def _trim_end(value: str) -> str:
    """Drop trailing whitespace, except one escaped space (``\\ ``)."""
    trimmed = value.rstrip(_WHITESPACE)
    if trimmed != value and _odd_backslashes(trimmed):
        return value[: len(trimmed) + 1]
    return trimmed


def _unescape(text: str) -> str:
    """Java's escapes: ``\\t \\n \\r \\f``, ``\\uXXXX``; any other ``\\c`` is ``c``."""

    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped == "u":
            raise ValueError("malformed \\uXXXX escape")
        if len(escaped) == 5:
            return chr(int(escaped[1:], 16))
        return _ESCAPED_CHARS.get(escaped, escaped)

    return _ESCAPE.sub(one, text)


def _expand(key: str, value: str, env: Mapping[str, str]) -> str:
    """Replace ``$$VAR$$`` and ``${VAR}``; an unset variable is an error, as in TorchServe."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in env:
            raise ValueError(f"{key}: environment variable {name} is not set")
        return env[name]

    return _ENV_REFERENCE.sub(one, value)


def parse_properties(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse config.properties text as TorchServe does (``java.util.Properties.load``).

    Separators ``=``, ``:`` or whitespace; ``#``/``!`` comments; backslash continuation;
    Java escapes; surrounding whitespace trimmed; the last of repeated keys wins. Then
    environment references in values are expanded from ``env`` (default ``os.environ``).
    """
    environ = os.environ if env is None else env
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        key, value = _split_key_value(line)
        try:
            props[_unescape(key)] = _unescape(value)
        except ValueError as exc:  # the value may be a secret: name the key only
            raise ValueError(f"{key}: {exc}") from None
    return {key: _expand(key, value, environ) for key, value in props.items()}


# -- values ---------------------------------------------------------------------------------

Warnings = list[str]


def _integer(key: str, value: str, warnings: Warnings) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected an integer, got {value!r}") from None


def _seconds(key: str, value: str, warnings: Warnings) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a number of seconds, got {value!r}") from None


def _java_bool(value: str) -> bool:
    """``Boolean.parseBoolean``: "true" in any case is true, anything else false."""
    return value.strip().lower() == "true"


def _boolean(key: str, value: str, warnings: Warnings) -> bool:
    if value.strip().lower() not in ("true", "false"):
        warnings.append(f"{key}: {value!r} is not true or false; read as false, as TorchServe does")
    return _java_bool(value)


def _path(key: str, value: str, warnings: Warnings) -> str:
    return value.strip()


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _load_models(key: str, value: str, warnings: Warnings) -> list[str]:
    """``all``, ``a.mar,b.mar`` or ``name=a.mar,...``; "standalone" (the docs' word for
    "nothing") and an empty value load no model."""
    items = _comma_list(value)
    if [item.lower() for item in items] == ["standalone"]:
        return []
    return ["all" if item.lower() == "all" else item for item in items]


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _workers(key: str, value: str, warnings: Warnings) -> int:
    count = _integer(key, value, warnings)
    if count == 0:
        # TorchServe's 0 means "one worker per GPU, else one per CPU". GPUs are not counted
        # here (the frontend never imports torch), so 0 becomes the CPUs this process may use.
        count = _usable_cpus()
        warnings.append(
            f"{key}: 0 means one worker per GPU, else per CPU, in TorchServe; using {count} "
            "(the CPUs available here): set it explicitly on a GPU host"
        )
    return count


def _allowed_urls(key: str, value: str, warnings: Warnings) -> list[str]:
    patterns = _comma_list(value)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{key}: {pattern!r} is not a valid regex: {exc}") from None
    return patterns


# Keys TorchServe reads from a models= entry (ConfigManager.getJsonIntValue and friends).
_TS_MODEL_KEYS = frozenset({
    "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
    "startupTimeout", "defaultVersion", "marName", "runtimeType",
})
_KNOWN_MODEL_KEYS = _TS_MODEL_KEYS | {
    f.alias for f in ModelConfig.model_fields.values() if f.alias
}


def _parse_json(key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        near = value[max(0, exc.pos - 30) : exc.pos + 30]
        raise ValueError(
            f"{key}: invalid JSON ({exc.msg} at character {exc.pos}, near {near!r}); "
            "modelserve needs strict JSON (no trailing commas, double quotes only)"
        ) from None


def _models(key: str, value: str, warnings: Warnings) -> dict[str, dict[str, dict[str, Any]]]:
    """TorchServe's per-model JSON, kept as is: name -> version -> parameters."""
    models = _parse_json(key, value)
    shape = "{name: {version: {parameter: value}}}"
    if not isinstance(models, dict):
        raise ValueError(f"{key}: expected a JSON object {shape}")
    for name, versions in models.items():
        if not isinstance(versions, dict) or not all(
            isinstance(params, dict) for params in versions.values()
        ):
            raise ValueError(f"{key}: model {name!r} is not {shape}")
        for version, params in versions.items():
            for param in sorted(params.keys() - _KNOWN_MODEL_KEYS):
                warnings.append(
                    f"{key}: {name} {version}: unknown per-model key {param!r} "
                    "(kept, but nothing reads it)"
                )
    return models


_Converter = Callable[[str, str, Warnings], Any]

# TorchServe key -> (Settings field, converter)
_MAPPED: dict[str, tuple[str, _Converter]] = {
    "model_store": ("model_store", _path),
    "load_models": ("load_models", _load_models),
    "default_workers_per_model": ("default_workers_per_model", _workers),
    "job_queue_size": ("job_queue_size", _integer),
    "max_request_size": ("max_request_size", _integer),
    "max_response_size": ("max_response_size", _integer),
    "install_py_dep_per_model": ("install_py_dep_per_model", _boolean),
    "allowed_urls": ("allowed_urls", _allowed_urls),
    "default_response_timeout": ("response_timeout", _seconds),
    "default_startup_timeout": ("startup_timeout", _seconds),
    "models": ("models", _models),
    "disable_token_authorization": ("disable_token_auth", _boolean),
    "enable_model_api": ("enable_model_api", _boolean),
}

# -- listener addresses ---------------------------------------------------------------------

_PORT_FIELDS = {
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


def _choose_host(addresses: dict[str, _Address], warnings: Warnings) -> str | None:
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


def _map_addresses(props: Mapping[str, str], config: TsConfig) -> None:
    addresses = {key: _parse_address(key, props[key]) for key in _PORT_FIELDS if key in props}
    _check_distinct_ports(addresses)
    for key, address in addresses.items():
        config.settings[_PORT_FIELDS[key]] = address.port
        if address.secure:
            config.warnings.append(
                f"{key}: https is not supported (no TLS here); serving plain HTTP on port "
                f"{address.port}: terminate TLS in a proxy in front"
            )
    host = _choose_host(addresses, config.warnings)
    if host is not None:
        config.settings["host"] = host


# -- keys with no setting here --------------------------------------------------------------


def _always(value: str) -> bool:
    return True


def _never(value: str) -> bool:
    return False


def _when_false(value: str) -> bool:
    return not _java_bool(value)


def _when_empty(value: str) -> bool:
    return not value.strip()


def _when_prometheus(value: str) -> bool:
    return value.strip().lower() == "prometheus"


@dataclass(frozen=True)
class _Rule:
    """Why a key sets nothing here, and for which values that changes nothing."""

    note: str
    harmless: Callable[[str], bool] = _never  # False: the entry says "not supported"
    show_value: bool = False


def _harmless(note: str) -> _Rule:
    """No effect here, whatever the value, and none is needed."""
    return _Rule(note, _always)


def _unsupported(note: str) -> _Rule:
    """TorchServe would do something here that modelserve does not."""
    return _Rule(note)


def _depends(harmless: Callable[[str], bool], note: str) -> _Rule:
    """Harmless for some values only; the warning then shows the value."""
    return _Rule(note, harmless, show_value=True)


_NETTY = _harmless("the frontend is one asyncio event loop (uvicorn); no Netty threads")
_NETTY_IO = _harmless("Netty I/O setting; the frontend runs on uvloop")
_SNAPSHOT_FIELD = _harmless("written by TorchServe into its snapshots; informational")
_NO_SYSTEM_METRICS = "TorchServe's system metrics (CPU, memory, disk, GPU) are not collected here"
_TLS = _unsupported("modelserve has no TLS; terminate TLS in a proxy in front")
_GRPC = _unsupported("TorchServe's gRPC APIs are not served (modelserve's OIP v2 gRPC "
                      "has its own grpc_inference_port setting)")
_CORS = _unsupported("no CORS headers are sent; add them in a proxy in front")
_SEQUENCE = _unsupported("modelserve has no sequence batching (stateful models)")
_IPEX = _depends(_when_false, "Intel Extension for PyTorch is never applied here")
_CPU_LAUNCHER = (
    "workers are not started through torch's CPU launcher; threads_per_worker sets their threads"
)

_IGNORED: dict[str, _Rule] = {
    # JVM, Netty and launcher internals: nothing to tune here.
    "number_of_netty_threads": _NETTY,
    "netty_client_threads": _NETTY,
    "use_native_io": _NETTY_IO,
    "io_ratio": _NETTY_IO,
    "prefer_direct_buffer": _harmless("JVM memory setting; there is no JVM here"),
    "vmargs": _harmless("JVM options; there is no JVM here"),
    "async_logging": _harmless("log4j setting; modelserve logs through Python logging "
                               "(log_level)"),
    "model_server_home": _harmless("TorchServe's install directory; none is needed"),
    "initial_worker_port": _harmless("workers talk to the frontend over Unix socket pairs, "
                                     "not ports"),
    "initial_distribution_port": _harmless("torchrun is not used, so no distribution ports"),
    "cpp_log_config": _harmless("there is no C++ backend here"),
    "unregister_model_timeout": _harmless("unregistering gives each worker modelserve's own "
                                          "grace period to finish its batches"),
    "snapshot_store": _harmless("modelserve keeps its own snapshot (state_dir/models.json), "
                                "not TorchServe's config snapshots"),
    "tsConfigFile": _SNAPSHOT_FIELD,
    "version": _SNAPSHOT_FIELD,
    "use_env_allowed_urls": _harmless("TS_ALLOWED_URLS is never read here (note: "
                                      "MODELSERVE_ALLOWED_URLS always is)"),
    # Metrics: always Prometheus text on metrics_port.
    "metrics_format": _harmless("metrics are always in Prometheus format here"),
    "metrics_config": _harmless("metrics.yaml is not read: the frontend's metrics are fixed "
                                "and handler metrics appear on /metrics as they are emitted"),
    "model_metrics_auto_detect": _harmless("handler metrics are always exported, without "
                                           "being declared"),
    "metric_time_interval": _harmless("it paces TorchServe's system metrics, which are not "
                                      "collected here; /metrics is computed at each scrape"),
    "metrics_mode": _depends(_when_prometheus, "metrics are always in Prometheus format on "
                             "/metrics here, never written to log files"),
    "enable_metrics_api": _depends(_java_bool, "the metrics API on metrics_port is always on "
                                   "here; keep the port private if it must not be read"),
    "disable_system_metrics": _depends(_java_bool, _NO_SYSTEM_METRICS),
    "system_metrics_cmd": _unsupported(_NO_SYSTEM_METRICS),
    # Request handling.
    "decode_input_request": _depends(_java_bool, "request bodies are always decoded here "
                                     "(JSON parsed, text/* as str), as TorchServe does with "
                                     "true"),
    "limit_max_image_pixels": _depends(_java_bool, "handlers always see "
                                       "limit_max_image_pixels=True here (PIL's limit "
                                       "applies)"),
    "ts_open_inference_protocol": _depends(_when_false, "only TorchServe's REST inference "
                                           "API is served here"),
    "service_envelope": _unsupported("request envelopes (json, kserve, kservev2) are not "
                                     "applied; handlers get TorchServe's plain request dicts"),
    "default_service_handler": _unsupported("an archive must name its handler in its "
                                            "manifest"),
    "ts_header_key_sequence_id": _SEQUENCE,
    "ts_header_key_sequence_start": _SEQUENCE,
    "ts_header_key_sequence_end": _SEQUENCE,
    # Security: modelserve has no TLS, CORS or environment filter.
    "keystore": _TLS,
    "keystore_pass": _TLS,
    "keystore_type": _TLS,
    "private_key_file": _TLS,
    "certificate_file": _TLS,
    "cors_allowed_origin": _CORS,
    "cors_allowed_methods": _CORS,
    "cors_allowed_headers": _CORS,
    "token_expiration_min": _harmless("modelserve's keys do not expire; rotate them with "
                                      "GET /token?type= and the API key"),
    "blacklist_env_vars": _depends(_when_empty, "workers inherit the server's whole "
                                   "environment; unset secrets before starting modelserve"),
    "enable_envvars_config": _depends(_when_false, "TS_<KEY> environment variables are never "
                                      "read here; MODELSERVE_<KEY> ones always are"),
    # Features modelserve does not have.
    "number_of_gpu": _unsupported("every visible GPU is used (worker i on cuda:i mod n); "
                                  "limit them with CUDA_VISIBLE_DEVICES (empty: CPU only)"),
    "ipex_enable": _IPEX,
    "ipex_gpu_enable": _IPEX,
    "cpu_launcher_enable": _depends(_when_false, _CPU_LAUNCHER),
    "cpu_launcher_args": _unsupported(_CPU_LAUNCHER),
    "debug": _depends(_when_false, "TorchServe's debug mode (one worker per model, started "
                      "by hand) has no equivalent; log_level=debug gives verbose logs"),
    "python": _unsupported("workers run on the interpreter that runs modelserve"),
    "plugins_path": _unsupported("TorchServe's Java plugins (endpoints, snapshot "
                                 "serializers) cannot load here"),
    "workflow_store": _unsupported("modelserve serves no workflows (.war archives)"),
    "model_snapshot": _unsupported("TorchServe's snapshots are not read (modelserve keeps "
                                   "its own); name the models in load_models"),
    "grpc_inference_address": _GRPC,
    "grpc_management_address": _GRPC,
    "grpc_inference_port": _GRPC,
    "grpc_management_port": _GRPC,
    "grpc_inference_max_connection_age_ms": _GRPC,
    "grpc_management_max_connection_age_ms": _GRPC,
    "grpc_inference_max_connection_age_grace_ms": _GRPC,
    "grpc_management_max_connection_age_grace_ms": _GRPC,
    "enable_grpc_ssl": _GRPC,
}

# Keys TorchServe may add within these families get their family's rule.
_FAMILIES = {"grpc_": _GRPC, "cors_": _CORS}


def _rule_for(key: str) -> _Rule | None:
    if key in _IGNORED:
        return _IGNORED[key]
    return next((rule for prefix, rule in _FAMILIES.items() if key.startswith(prefix)), None)


def _unmapped_warning(key: str, value: str) -> str:
    """The one warnings entry for a key that sets nothing here."""
    rule = _rule_for(key)
    if rule is None:
        hint = ""
        if key in Settings.model_fields:
            hint = f" (a modelserve setting: put it in config.yaml or MODELSERVE_{key.upper()})"
        return f"{key}: unknown TorchServe key, ignored{hint}"
    label = f"{key}={value.strip()}" if rule.show_value else key
    verdict = "ignored" if rule.harmless(value) else "not supported"
    return f"{label}: {verdict}, {rule.note}"


# -- the file -------------------------------------------------------------------------------


@dataclass
class TsConfig:
    """Settings fields from a config.properties, and one entry per key not fully honoured."""

    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _read_text(path: Path) -> str:
    """UTF-8; Latin-1 (what java.util.Properties reads) when the file is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_ts_config(path: Path) -> TsConfig:
    """Map a TorchServe config.properties onto Settings fields (only keys it contains).

    Raises ValueError for a value that cannot be honoured at all (bad number, address,
    regex or models= JSON, unset environment variable).
    """
    props = parse_properties(_read_text(Path(path)))
    config = TsConfig()
    _map_addresses(props, config)
    for key, value in props.items():
        if key in _PORT_FIELDS:
            continue
        if key in _MAPPED:
            name, convert = _MAPPED[key]
            config.settings[name] = convert(key, value, config.warnings)
        else:
            config.warnings.append(_unmapped_warning(key, value))
    return config
