"""TorchServe's ``enable_envvars_config=true``: ``TS_*`` environment variables override the
config.properties keys they name (ConfigManager.setSystemVars).

Only the variables TorchServe declares are read (``TS_`` + the key in capitals, e.g.
``TS_ENABLE_MODEL_API`` for ``enable_model_api``), and ``TS_ALLOWED_URLS`` only when the
file also says ``use_env_allowed_urls=true``, as there: an environment must not widen what
the server downloads unless the file allows it.
"""

from __future__ import annotations

from collections.abc import Mapping

# ConfigManager's TS_* keys (v0.12.0): what an environment variable may set
KEYS = frozenset("""
debug inference_address management_address metrics_address load_models blacklist_env_vars
default_workers_per_model default_response_timeout default_startup_timeout
unregister_model_timeout number_of_netty_threads netty_client_threads job_queue_size
number_of_gpu metrics_config metrics_mode model_metrics_auto_detect disable_system_metrics
ipex_enable cpu_launcher_enable cpu_launcher_args ipex_gpu_enable async_logging
cors_allowed_origin cors_allowed_methods cors_allowed_headers decode_input_request keystore
keystore_pass keystore_type certificate_file private_key_file max_request_size
max_response_size limit_max_image_pixels default_service_handler service_envelope
model_server_home model_store prefer_direct_buffer allowed_urls install_py_dep_per_model
enable_metrics_api grpc_inference_address grpc_management_address grpc_inference_port
grpc_management_port enable_grpc_ssl initial_worker_port initial_distribution_port
workflow_store cpp_log_config token_expiration_min ts_header_key_sequence_id
ts_header_key_sequence_start ts_header_key_sequence_end disable_token_authorization
enable_model_api
""".split())
# the file's own switches for this, read here and nowhere else
SWITCHES = frozenset({"enable_envvars_config", "use_env_allowed_urls"})
# TS_OPEN_INFERENCE_PROTOCOL is the one variable whose key is not its name in lower case
RENAMED = {"ts_open_inference_protocol": "TS_OPEN_INFERENCE_PROTOCOL"}


def _variable(key: str) -> str:
    return RENAMED.get(key, f"TS_{key.upper()}")


def from_environment(props: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """The keys the ``TS_*`` variables set, when the file enables that (else none).

    TorchServe reads them after its command-line flags (ConfigManager's constructor), so a
    key named here also beats ``--model-store``, ``--models``, ``--enable-model-api`` and
    ``--disable-token-auth``."""
    if props.get("enable_envvars_config", "false").strip().lower() != "true":
        return {}
    env_urls = props.get("use_env_allowed_urls", "false").strip().lower() == "true"
    found: dict[str, str] = {}
    for key in KEYS | RENAMED.keys():
        if key == "allowed_urls" and not env_urls:
            continue
        value = env.get(_variable(key))
        if value is not None:
            found[key] = value
    return found


def with_environment(props: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """``props`` with the ``TS_*`` variables laid over it when the file enables that."""
    return {**props, **from_environment(props, env)}
