"""TorchServe's config.properties, read into modelserve settings.

A deployment moving from TorchServe brings its config.properties. ``read_ts_config`` maps every
key that has an equivalent here onto a field of ``modelserve.config.Settings`` and reports, key
by key, what it does not honour, so that no setting is lost without a word. Only keys present
in the file become settings; the caller layers them (flags > env > ts-config > config.yaml >
defaults).

Each entry of ``TsConfig.warnings`` names its key first. ``"KEY: ignored, ..."`` entries are
informational: the key has no effect here and none is needed. ``"KEY...: not supported, ..."``
entries mean TorchServe would behave differently; ``"KEY: unknown TorchServe key, ..."``
entries are probably typos. Other entries explain how a mapped value was read. The keys that
set nothing here, and their warnings, are in ``modelserve.ts_unmapped``; the listener
addresses and TLS's switches are read by ``modelserve.ts_listeners``; the file's Java syntax
is read by the javaproperties library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import javaproperties

from modelserve.config import ModelConfig
from modelserve.ts_env import SWITCHES, with_environment
from modelserve.ts_grpc import GRPC_FIELDS, map_grpc
from modelserve.ts_listeners import PORT_FIELDS as _PORT_FIELDS
from modelserve.ts_listeners import TLS_SWITCHES as _TLS_SWITCHES
from modelserve.ts_listeners import map_listeners
from modelserve.ts_log4j import config_from_vmargs
from modelserve.ts_unmapped import java_bool, unmapped_warning

__all__ = ["TsConfig", "parse_properties", "read_ts_config"]

# -- the .properties syntax -----------------------------------------------------------------

_LINE_END = re.compile(r"(\r\n|\r|\n)")
_BLANKS = " \t\f"  # Java's whitespace in .properties; no other character is
# TorchServe's own syntax is $$VAR$$ (ConfigManager.resolveEnvVarVals); ${VAR} is accepted too.
_ENV_REFERENCE = re.compile(
    r"\$\$([A-Za-z_][A-Za-z0-9_]*)\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
)


def _trim_end(line: str) -> str:
    """Drop a physical line's trailing whitespace, but an escaped blank (``\\ ``) stays."""
    trimmed = line.rstrip(_BLANKS)
    if trimmed != line and (len(trimmed) - len(trimmed.rstrip("\\"))) % 2:
        return line[: len(trimmed) + 1]
    return trimmed


def _trim_line_ends(text: str) -> str:
    parts = _LINE_END.split(text)  # line, line end, line, ..., line
    parts[::2] = [_trim_end(line) for line in parts[::2]]
    return "".join(parts)


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

    The syntax (separators, comments, continued lines, escapes; the last of repeated keys
    wins) is javaproperties', which gives what Java 17's ``Properties.load`` gives on
    TorchServe's own files and on every escape case in tests/test_ts_config.py. Two steps
    are added. Unescaped whitespace at the end of a line is dropped first: Java keeps it, so
    TorchServe reads ``ipex_enable=true `` (sic, in one of its own examples) as false, a trap
    no one means. ``$$VAR$$`` and ``${VAR}`` in values are then expanded from ``env``
    (default ``os.environ``), as TorchServe's ConfigManager does.
    """
    environ = os.environ if env is None else env
    props: dict[str, str] = {}
    line = 1
    try:
        for entry in javaproperties.parse(_trim_line_ends(text)):
            if isinstance(entry, javaproperties.KeyValue):
                props[entry.key] = entry.value
            line += len(_LINE_END.findall(entry.source))
    except javaproperties.InvalidUEscapeError:  # its message quotes the value: a secret?
        raise ValueError(f"line {line}: malformed \\uXXXX escape") from None
    return {key: _expand(key, value, environ) for key, value in props.items()}


# -- values ---------------------------------------------------------------------------------

Warnings = list[str]


def _integer(key: str, value: str, warnings: Warnings) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected an integer, got {value!r}") from None


def _minutes(key: str, value: str, warnings: Warnings) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a number of minutes, got {value!r}") from None


def _seconds(key: str, value: str, warnings: Warnings) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ValueError(f"{key}: expected a number of seconds, got {value!r}") from None


def _boolean(key: str, value: str, warnings: Warnings) -> bool:
    if value.strip().lower() not in ("true", "false"):
        warnings.append(f"{key}: {value!r} is not true or false; read as false, as TorchServe does")
    return java_bool(value)


def _path(key: str, value: str, warnings: Warnings) -> str:
    return value.strip()


def _metrics_mode(key: str, value: str, warnings: Warnings) -> str:
    """ConfigManager.getMetricsMode: blanks dropped, any case; anything else is log."""
    mode = re.sub(r"\s", "", value).lower()
    if mode not in ("log", "prometheus", "legacy"):
        warnings.append(f"{key}: {value!r} is not log, prometheus or legacy; read as log, as "
                        "TorchServe does")
        return "log"
    return mode


def _text(key: str, value: str, warnings: Warnings) -> str:
    return value.strip()


def _secret(key: str, value: str, warnings: Warnings) -> str:
    return value  # a password: as written


def _keystore_type(key: str, value: str, warnings: Warnings) -> str:
    """Java's KeyStore.getInstance: PKCS12 in any case is read here; JKS and others are not."""
    if value.strip().upper() != "PKCS12":
        raise ValueError(f"{key}={value.strip()}: only PKCS12 keystores can be read here; "
                         "convert it: keytool -importkeystore -srckeystore KEYSTORE "
                         "-destkeystore keystore.p12 -deststoretype PKCS12")
    return "PKCS12"


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


def _envelope(key: str, value: str, warnings: Warnings) -> str | None:
    """A module of TorchServe's ts/torch_handler/request_envelope/; empty: none."""
    name = value.strip()
    if name and name not in ("body", "json", "kserve", "kservev2"):
        raise ValueError(f"{key}: {name!r} is not one of TorchServe's envelopes: body, json, "
                         "kserve, kservev2")
    return name or None


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


def _model_snapshot(key: str, value: str, warnings: Warnings) -> dict[str, Any]:
    """A TorchServe snapshot's models (SnapshotManager.restore): name -> version -> state,
    each naming its archive (marName); none when its modelCount is 0."""
    snapshot = _parse_json(key, value)
    models = snapshot.get("models") if isinstance(snapshot, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f'{key}: expected a TorchServe snapshot, {{"models": {{name: '
                         '{version: {"marName": ARCHIVE, ...}}}}')
    for name, versions in models.items():
        if not isinstance(versions, dict) or not all(
                isinstance(state, dict) and isinstance(state.get("marName"), str)
                for state in versions.values()):
            raise ValueError(f'{key}: model {name!r} is not {{version: {{"marName": ARCHIVE, '
                             '...}}')
    count = snapshot.get("modelCount")
    return {} if isinstance(count, int) and count <= 0 else models


_Converter = Callable[[str, str, Warnings], Any]

# TorchServe key -> (Settings field, converter)
_MAPPED: dict[str, tuple[str, _Converter]] = {
    "model_store": ("model_store", _path),
    "workflow_store": ("workflow_store", _path),
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
    "token_expiration_min": ("token_expiration_min", _minutes),
    "enable_model_api": ("enable_model_api", _boolean),
    "service_envelope": ("service_envelope", _envelope),
    "ts_header_key_sequence_id": ("ts_header_key_sequence_id", _text),
    "ts_header_key_sequence_start": ("ts_header_key_sequence_start", _text),
    "ts_header_key_sequence_end": ("ts_header_key_sequence_end", _text),
    "model_snapshot": ("ts_model_snapshot", _model_snapshot),
    "metrics_mode": ("metrics_mode", _metrics_mode),
    "metrics_config": ("metrics_config", _path),
    "model_metrics_auto_detect": ("model_metrics_auto_detect", _boolean),
    "disable_system_metrics": ("disable_system_metrics", _boolean),
    "metric_time_interval": ("metric_time_interval", _integer),
    # ConfigManager.getSslContext: a keystore first, else the PEM pair
    "certificate_file": ("tls_cert_file", _path),
    "private_key_file": ("tls_key_file", _path),
    "keystore": ("tls_keystore", _path),
    "keystore_pass": ("tls_keystore_password", _secret),
    "keystore_type": ("tls_keystore_type", _keystore_type),
    # NettyUtils.sendHttpResponse: sent as written on every response
    "cors_allowed_origin": ("cors_allowed_origin", _text),
    "cors_allowed_methods": ("cors_allowed_methods", _text),
    "cors_allowed_headers": ("cors_allowed_headers", _text),
    # modelserve's own keys (TorchServe has none): slow clients, descriptors, readiness
    "request_header_timeout": ("request_header_timeout", _seconds),
    "request_body_timeout": ("request_body_timeout", _seconds),
    "max_connections": ("max_connections", _integer),
    "ready_with_failed_models": ("ready_with_failed_models", _boolean),
}

# -- the file -------------------------------------------------------------------------------


@dataclass
class TsConfig:
    """Settings fields from a config.properties, and one entry per key not fully honoured."""

    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)  # as read: what snapshots keep


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
    props = with_environment(parse_properties(_read_text(Path(path))), os.environ)
    config = TsConfig(properties=dict(props))
    map_listeners(props, config.settings, config.warnings)
    map_grpc(props, config.settings, config.warnings)
    if (log4j := config_from_vmargs(props.get("vmargs", ""))) is not None:
        config.settings["log4j_config"] = log4j  # its levels quiet the log files (ts_log4j)
    for key, value in props.items():
        if (key in _PORT_FIELDS or key in SWITCHES or key in _TLS_SWITCHES
                or key in GRPC_FIELDS):
            continue
        if key in _MAPPED:
            name, convert = _MAPPED[key]
            config.settings[name] = convert(key, value, config.warnings)
        else:
            config.warnings.append(unmapped_warning(key, value))
    return config
