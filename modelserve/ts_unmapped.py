"""TorchServe's keys that set nothing in modelserve: why, and the one warning each gets.

``ts_config`` maps the keys that have a setting here; every other key of a config.properties
gets ``unmapped_warning``. A rule says why the key sets nothing, and for which values that
changes nothing ("ignored") or means TorchServe would behave differently ("not supported").
Unknown keys are reported as probable typos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelserve.config import Settings

__all__ = ["IGNORED", "java_bool", "unmapped_warning"]


def java_bool(value: str) -> bool:
    """``Boolean.parseBoolean``: "true" in any case is true, anything else false."""
    return value.strip().lower() == "true"


def _always(value: str) -> bool:
    return True


def _never(value: str) -> bool:
    return False


def _when_false(value: str) -> bool:
    return not java_bool(value)


def _when_empty(value: str) -> bool:
    return not value.strip()


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
_GRPC = _unsupported("gRPC connections have no maximum age here (grpcio's default, and "
                      "TorchServe's when the key is unset)")
_IPEX = _depends(_when_false, "Intel Extension for PyTorch is never applied here")
_CPU_LAUNCHER = (
    "workers are not started through torch's CPU launcher; threads_per_worker sets their threads"
)

IGNORED: dict[str, _Rule] = {
    # JVM, Netty and launcher internals: nothing to tune here.
    "number_of_netty_threads": _NETTY,
    "netty_client_threads": _NETTY,
    "use_native_io": _NETTY_IO,
    "io_ratio": _NETTY_IO,
    "prefer_direct_buffer": _harmless("JVM memory setting; there is no JVM here"),
    "vmargs": _harmless("JVM options; there is no JVM here (the levels of the log4j2 file "
                        "a -Dlog4j.configurationFile names are read: log4j_config)"),
    "async_logging": _harmless("log4j setting; modelserve logs through Python logging "
                               "(log_level)"),
    "model_server_home": _harmless("TorchServe's install directory; none is needed"),
    "initial_worker_port": _harmless("workers talk to the frontend over Unix socket pairs, "
                                     "not ports"),
    "initial_distribution_port": _harmless("torchrun is not used, so no distribution ports"),
    "cpp_log_config": _harmless("there is no C++ backend here"),
    "unregister_model_timeout": _harmless("unregistering gives each worker modelserve's own "
                                          "grace period to finish its batches"),
    "snapshot_store": _harmless("TorchServe 0.12 reads it nowhere either: snapshots are "
                                "files in ts_snapshot_dir ($LOG_LOCATION/config)"),
    "tsConfigFile": _SNAPSHOT_FIELD,
    "version": _SNAPSHOT_FIELD,
    # Metrics: Prometheus text on metrics_port in every metrics_mode (a mapped key).
    "metrics_format": _harmless("metrics are always in Prometheus format here"),
    "enable_metrics_api": _depends(java_bool, "the metrics API on metrics_port is always on "
                                   "here; keep the port private if it must not be read"),
    "system_metrics_cmd": _unsupported("no script is run for the host metrics: the frontend "
                                       "reads CPU, memory and disk itself, GPUs with "
                                       "nvidia-smi"),
    # Request handling.
    "decode_input_request": _depends(java_bool, "request bodies are always decoded here "
                                     "(JSON parsed, text/* as str), as TorchServe does with "
                                     "true"),
    "limit_max_image_pixels": _depends(java_bool, "handlers always see "
                                       "limit_max_image_pixels=True here (PIL's limit "
                                       "applies)"),
    "ts_open_inference_protocol": _depends(_when_false, "only TorchServe's REST inference "
                                           "API is served here"),
    "default_service_handler": _unsupported("an archive must name its handler in its "
                                            "manifest"),
    # Security (TLS and CORS keys are mapped): no environment filter.
    "blacklist_env_vars": _depends(_when_empty, "workers inherit the server's whole "
                                   "environment; unset secrets before starting modelserve"),
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
    "grpc_inference_max_connection_age_ms": _GRPC,
    "grpc_management_max_connection_age_ms": _GRPC,
    "grpc_inference_max_connection_age_grace_ms": _GRPC,
    "grpc_management_max_connection_age_grace_ms": _GRPC,
}

# Keys TorchServe may add within these families get their family's rule.
_FAMILIES = {"grpc_": _unsupported("a TorchServe gRPC setting with no equivalent here")}


def _rule_for(key: str) -> _Rule | None:
    if key in IGNORED:
        return IGNORED[key]
    return next((rule for prefix, rule in _FAMILIES.items() if key.startswith(prefix)), None)


def unmapped_warning(key: str, value: str) -> str:
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
