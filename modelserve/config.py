"""Settings: the server's (config.yaml + ``MODELSERVE_*`` env) and each model's.

Precedence for the server: command-line flags > environment > config file > defaults.
Precedence for a model: server defaults < the archive's model-config.yaml < management API
parameters, as in TorchServe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from modelserve.autoscale_config import AutoscaleSettings
from modelserve.model_config import BatchSize, BatchThreads, DelayMs, ModelConfig, TimeoutS

__all__ = ["BatchSize", "BatchThreads", "DelayMs", "ModelConfig", "Settings", "TimeoutS",
           "load_settings"]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _header_value(value: Any) -> Any:
    """A CORS header's value: a string as is, a list joined with ", "; empty: no header."""
    if isinstance(value, list | tuple):
        value = ", ".join(str(item).strip() for item in value)
    return value.strip() or None if isinstance(value, str) else value


CorsValue = Annotated[str | None, BeforeValidator(_header_value)]
# an HTTP header's name (a token), lower-cased as the frontend sees request headers
HeaderName = Annotated[str, BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str)
                                            else v), Field(pattern=r"^[!#$%&'*+.^_`|~0-9a-z-]+$")]


class Settings(BaseSettings):
    """The server's configuration. Every field is documented in config.yaml."""

    model_config = SettingsConfigDict(
        env_prefix="MODELSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = Field("127.0.0.1", description="Address the three HTTP listeners bind to.")
    inference_port: int = Field(8080, ge=1, le=65535,
                                description="Inference API port (/ping, /predictions).")
    management_port: int = Field(8081, ge=1, le=65535,
                                 description="Management API port (/models).")
    metrics_port: int = Field(8082, ge=1, le=65535,
                              description="Prometheus metrics port (/metrics).")
    grpc_inference_port: int = Field(
        8085, ge=0, le=65535,
        description="OIP v2 gRPC (GRPCInferenceService) port; 0 turns gRPC off.")
    grpc_torchserve_inference_port: int = Field(
        0, ge=0, le=65535, description="TorchServe's gRPC inference API (its inference.proto: "
        "Ping, Predictions, StreamPredictions, StreamPredictions2) port; 0: off. Under "
        "--ts-config: 7070 (grpc_inference_port).")
    grpc_torchserve_management_port: int = Field(
        0, ge=0, le=65535, description="TorchServe's gRPC management API (its "
        "management.proto) port; 0: off. Under --ts-config: 7071 (grpc_management_port).")
    grpc_torchserve_host: str | None = Field(
        None, description="Address TorchServe's two gRPC APIs bind to; None: host. Under "
        "--ts-config: 127.0.0.1 (grpc_inference_address).")
    model_store: Path = Field(Path("model_store"), description="Where archive names resolve.")
    workflow_store: Path | None = Field(
        None, description="Where workflow archive (.war) names in POST /workflows?url= "
        "resolve; None: model_store, as in TorchServe.")
    load_models: list[str] = Field(
        default_factory=list,
        description="Archives to register at start: 'NAME=ARCHIVE', 'ARCHIVE' or 'all'.",
    )
    default_workers_per_model: int = Field(1, ge=0, description="Workers per model at start.")
    max_workers_per_model: int = Field(
        64, ge=1, description="Most worker processes one model version may ask for (registration, "
        "model-config.yaml or the scale API): a typo must not fork thousands of processes.")
    batch_size: BatchSize = Field(1, description="Default maximum batch size.")
    max_batch_delay: DelayMs = Field(100.0, description="Default batch wait, milliseconds.")
    response_timeout: TimeoutS = Field(120.0, description="Seconds a batch may take.")
    startup_timeout: TimeoutS = Field(120.0, description="Seconds a worker may take to load.")
    job_queue_size: int = Field(
        1000, ge=1, description="Queued requests per model version before 503.")
    pipeline_depth: int = Field(
        2, ge=1, description="Batches in flight per worker batch lane, counting the one it "
        "runs: batch_threads + pipeline_depth - 1 per worker.")
    batch_threads: BatchThreads = Field(
        "auto", description="Batches one worker runs at once, each on its own thread with its "
        "own copy of the handler (threads_per_worker shared among them). auto: one per torch "
        "thread (at most 4) on CPU when the handler class declares thread_safe = True (the "
        "built-in handlers do) or subclasses such a class without an initialize of its own, "
        "else 1, TorchServe's one batch at a time.")
    max_request_size: int = Field(6553500, ge=1, description="Largest request body, bytes.")
    max_response_size: int = Field(6553500, ge=1, description="Largest response body, bytes.")
    service_envelope: Annotated[Literal["body", "json", "kserve", "kservev2"] | None,
                                BeforeValidator(lambda v: v.strip() or None
                                                if isinstance(v, str) else v)] = Field(
        None, description="TorchServe's request envelope around every handler (kserve, "
        "kservev2, json, body: modelserve.worker.envelopes); None: plain request dicts.")
    ts_header_key_sequence_id: HeaderName = Field(
        "ts_request_sequence_id", description="Sequence batching: the header naming a "
        "request's sequence (TorchServe's config.properties key of the same name).")
    ts_header_key_sequence_start: HeaderName = Field(
        "ts_request_sequence_start", description="Sequence batching: the header the frontend "
        "adds, true, to the first request of a sequence it opened.")
    ts_header_key_sequence_end: HeaderName = Field(
        "ts_request_sequence_end", description="Sequence batching: the answer header by which "
        "a handler ends sequences (their ids, ;-separated).")
    allowed_urls: list[str] = Field(
        default_factory=list,
        description="Regexes of http(s)/file URLs that POST /models may fetch; empty: only "
        "archives inside model_store.",
    )
    install_py_dep_per_model: bool = Field(
        False, description="pip-install an archive's requirements file for its workers.")
    models: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="Per-model overrides, TorchServe's shape: name -> version -> "
        "{minWorkers, maxWorkers, batchSize, maxBatchDelay, responseTimeout, ...}.",
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="Torch/ONNX threads per worker; default cores / the workers "
        "of its model.")
    autoscale: AutoscaleSettings = Field(
        default_factory=AutoscaleSettings, description="Workers between minWorkers and "
        "maxWorkers on each model's load (modelserve.autoscale_config; docs/autoscaling.md).")
    worker_start: Literal["zygote", "spawn"] = Field(
        "zygote", description="zygote: workers are forked from one process that imported torch "
        "once, so they share its memory and start without importing it again; spawn: each "
        "worker is a fresh interpreter. Models with their own requirements are always spawned."
    )
    workdir: Path = Field(Path(".modelserve"), description="Extracted archives live here.")
    # -- security ---------------------------------------------------------------------------
    disable_token_auth: bool = Field(
        False, description="Serve without bearer tokens (TorchServe: "
        "disable_token_authorization)."
    )
    key_file: Path | None = Field(
        None, description="Token key file (0600), created at first start; default "
        "<workdir>/key_file.json."
    )
    enable_model_api: bool = Field(
        True, description="Allow POST/DELETE /models (register/unregister); false: 405."
    )
    timeout_status: Literal[500, 504] = Field(
        504, description="HTTP status of a request whose batch outlived response_timeout: "
        "504 Gateway Timeout (modelserve), or 500 as TorchServe answers (the default under "
        "--ts-config). The worker is recycled either way.")
    auth_failure_status: Literal[400, 401] = Field(
        401, description="Status of a request without the right key: 401 (modelserve), or "
        "400 as TorchServe answers (the default under --ts-config).")
    token_expiration_min: float | None = Field(
        None, gt=0, description="Minutes the inference and management keys stay valid after "
        "the server starts or rotates them (GET /token); unset: they do not expire. "
        "TorchServe's token_expiration_min, 60 by default under --ts-config.")
    strict_params: bool = Field(
        True, description="Refuse a malformed management-API query value with 400 "
        "(modelserve's default). false: read query values as TorchServe's frontend does: an "
        "empty or unparsable number is the parameter's default, a boolean is true only for "
        "'true' (the default under --ts-config).")
    registration_workers: int | None = Field(
        None, ge=0, description="Workers POST /models starts when the request names no "
        "initial_workers (model-config.yaml's minWorkers still wins); unset: "
        "default_workers_per_model. TorchServe registers with 0 unless its config sets "
        "default_workers_per_model (the default under --ts-config).")
    max_archive_size: int = Field(
        20 << 30, ge=1, description="Largest total extracted size of an archive, bytes.")
    max_archive_ratio: float = Field(
        200.0, gt=1, description="Largest extracted/compressed size ratio (zip bombs).")
    # -- TLS and CORS (modelserve.server.transport.tls, .http.cors) ----------------------------
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain, the server's certificate first, for the "
        "listeners in tls_listeners (TorchServe: certificate_file).")
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file, unencrypted; None: the key is in "
        "tls_cert_file (TorchServe: private_key_file).")
    tls_keystore: Path | None = Field(
        None, description="A PKCS12 keystore with the private key and its certificate chain, "
        "instead of tls_cert_file (TorchServe: keystore).")
    tls_keystore_password: SecretStr | None = Field(
        None, description="The keystore's password; None: TorchServe's default, changeit "
        "(TorchServe: keystore_pass).")
    tls_keystore_type: Annotated[Literal["PKCS12"], BeforeValidator(_upper)] = Field(
        "PKCS12", description="PKCS12, the only keystore type read here (TorchServe: "
        "keystore_type; convert a JKS keystore with keytool -importkeystore).")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA certificates: every TLS listener then asks for a client "
        "certificate signed by one of them (mutual TLS).")
    tls_security_level: int | None = Field(
        None, ge=0, le=5, description="OpenSSL security level of the HTTP listeners' TLS "
        "(1 accepts 1024-bit RSA keys, 2 refuses them). None: OpenSSL's default (2 on "
        "current systems); the TorchServe personality uses 1, as Java accepts such keys.")
    tls_listeners: list[Literal["inference", "management", "metrics", "grpc"]] | None = Field(
        None, description="The listeners that serve TLS ('grpc': every gRPC server). None: all "
        "of them when tls_cert_file, tls_key_file or tls_keystore is set, else none. A "
        "listener named here with no certificate set serves a self-signed one, as TorchServe "
        "does.")
    cors_allowed_origin: CorsValue = Field(
        None, description="Access-Control-Allow-Origin sent on every HTTP response ('*' or an "
        "origin); None: no CORS (TorchServe's cors_allowed_origin).")
    cors_allowed_methods: CorsValue = Field(
        None, description="Access-Control-Allow-Methods sent on every HTTP response, e.g. "
        "'GET, POST, PUT, OPTIONS' (TorchServe's cors_allowed_methods).")
    cors_allowed_headers: CorsValue = Field(
        None, description="Access-Control-Allow-Headers sent on every HTTP response, e.g. "
        "'Authorization, Content-Type' (TorchServe's cors_allowed_headers).")
    # -- reliability -------------------------------------------------------------------------
    shutdown_grace_period: float = Field(
        30.0, ge=0, description="Seconds SIGTERM waits for in-flight requests.")
    drain_delay: float = Field(
        0.0, ge=0, description="Seconds after SIGTERM the listeners keep accepting while "
        "/ping answers 503 Draining."
    )
    request_header_timeout: TimeoutS = Field(
        60.0, description="Seconds a client has to send a whole request head (from connecting, "
        "or a kept-alive request's first byte); then 408 and closed (nginx's default).")
    request_body_timeout: TimeoutS = Field(
        60.0, description="Seconds a request body may pause between two reads; then 408 and "
        "closed (nginx's default).")
    max_connections: int | None = Field(
        None, ge=1, description="Most client connections of the HTTP listeners together; None: "
        "the descriptor limit less a reserve for workers, archives, logs and gRPC.")
    grpc_max_connections: int | None = Field(
        None, ge=1, description="Most client connections of each gRPC listener (more are "
        "refused at once); None: an eighth of the descriptors max_connections leaves, at "
        "least 16. A connection that has not finished its TLS and HTTP/2 handshake within "
        "request_header_timeout is closed.")
    ready_with_failed_models: bool = Field(
        False, description="Readiness ignores models named at start that cannot load at all.")
    model_snapshot: bool = Field(
        True, description="Save registered models to <state_dir>/models.json and restore "
        "them at start."
    )
    state_dir: Path | None = Field(None, description="Default <workdir>/state.")
    ts_config_snapshots: bool = Field(
        False, description="Write TorchServe's config snapshots, <ts_snapshot_dir>/"
        "<yyyyMMddHHmmssSSS>-startup|snapshot|shutdown.cfg, at start, after every management "
        "change and at stop, and start from the latest one when no --ts-config is given (the "
        "default under the TorchServe personality; --ncs: false).")
    ts_snapshot_dir: Path | None = Field(
        None, description="Where TorchServe's config snapshots go; default <log_dir>/config, "
        "else $LOG_LOCATION/config, else logs/config (TorchServe's).")
    ts_model_snapshot: dict[str, dict[str, dict[str, Any]]] | None = Field(
        None, description="The models a TorchServe snapshot registers at start instead of "
        "load_models and models.json: its model_snapshot key's models (name -> version -> "
        "{marName, minWorkers, maxWorkers, batchSize, ...}); set by --ts-config.")
    ts_properties: dict[str, str] = Field(
        default_factory=dict, description="The config.properties keys each TorchServe snapshot "
        "file carries (set from --ts-config and TorchServe's flags).")
    log_level: Annotated[Literal["debug", "info", "warning", "error"],
                         BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)] = Field(
        "info", description="debug, info, warning or error.")
    access_log: bool = Field(
        False, description="Log every HTTP request, one line each (costs some throughput)."
    )
    access_log_format: Literal["json", "torchserve"] = Field(
        "json", description="json: a JSON object per request; torchserve: TorchServe's line, "
        "'/IP:PORT \"METHOD URI HTTP/1.1\" STATUS MS' (the default under --ts-config).")
    lifecycle_log: Literal["modelserve", "torchserve"] = Field(
        "modelserve", description="How worker start failures are logged. torchserve: in "
        "TorchServe's words, which its scripts and tests wait for ('Backend worker error', "
        "'Load model failed: NAME, error: Worker died.'); the default under --ts-config.")
    log4j_config: Path | None = Field(
        None, description="A TorchServe log4j2 file (XML or .properties): its ACCESS_LOG, "
        "MODEL_LOG, TS_METRICS and MODEL_METRICS levels (else Root's) are those of "
        "TorchServe's log files here. Set from config.properties' vmargs "
        "-Dlog4j.configurationFile and torchserve --log-config; None: INFO.")
    # -- TorchServe's log files and metrics log -----------------------------------------------
    log_dir: Path | None = Field(
        None, description="Write TorchServe's log files here: access_log.log, model_log.log "
        "(the workers' output), ts_log.log (everything). None: no files. Under --ts-config: "
        "$LOG_LOCATION, else logs.")
    metrics_log_dir: Path | None = Field(
        None, description="Where ts_metrics.log and model_metrics.log go; None: log_dir. "
        "Under --ts-config: $METRICS_LOCATION, else logs.")
    metrics_mode: Literal["prometheus", "log", "legacy"] = Field(
        "prometheus", description="prometheus: metrics on /metrics only. log: also as "
        "TorchServe's metric lines in ts_metrics.log and model_metrics.log (TorchServe's "
        "default, so the default under --ts-config). legacy: log, less the ts_inference_* "
        "counters. /metrics serves Prometheus in every mode (see metrics_exposition).")
    metrics_exposition: Literal["modelserve", "torchserve"] = Field(
        "modelserve", description="What /metrics serves. modelserve: every metric, "
        "TorchServe's names included, plus modelserve_* series. torchserve: TorchServe's own "
        "/metrics (the default under --ts-config): the metrics_config series in metrics_mode "
        "prometheus, only the ts_inference_* counters in legacy, none in log, in its Java "
        "client's text format; modelserve_* series follow them.")
    metrics_config: Path | None = Field(
        None, description="A TorchServe metrics.yaml: which metrics the metrics log writes "
        "(and, with metrics_exposition torchserve, /metrics lists), with their units, types and "
        "dimension names. None: TorchServe's default selection.")
    model_metrics_auto_detect: bool = Field(
        False, description="Metrics log: also write handler metrics metrics_config does not "
        "name (TorchServe's model_metrics_auto_detect).")
    disable_system_metrics: bool = Field(
        False, description="Metrics log: leave out TorchServe's host metrics (CPU, memory, "
        "disk, GPU).")
    metric_time_interval: int = Field(
        60, ge=1, le=86_400, description="Metrics log: seconds between host metric readings.")

    @property
    def key_path(self) -> Path:
        return self.key_file if self.key_file is not None else self.workdir / "key_file.json"

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.workdir / "state"

    def uses_tls(self, listener: str) -> bool:
        """Whether ``listener`` (inference, management, metrics or grpc) serves TLS."""
        if self.tls_listeners is not None:
            return listener in self.tls_listeners
        return any(path is not None for path in (self.tls_cert_file, self.tls_key_file,
                                                  self.tls_keystore))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        ts_values = getattr(settings_cls, "_ts_values", {})
        personality = getattr(settings_cls, "_personality", {})
        return (init_settings, env_settings,
                InitSettingsSource(settings_cls, init_kwargs=ts_values),
                YamlConfigSettingsSource(settings_cls),
                InitSettingsSource(settings_cls, init_kwargs=personality))


def load_settings(config_file: Path | None = None, ts_values: dict[str, Any] | None = None,
                  personality: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Build Settings: explicit overrides (None = unset) > environment > values read from a
    TorchServe config.properties > the YAML file > the personality's defaults
    (``modelserve.personality``) > modelserve's defaults."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    if config_file is not None:  # one line that says what is wrong, not a parser traceback
        try:
            doc = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"config file {config_file} is not valid YAML: "
                             f"{' '.join(str(exc).split())}") from None
        if doc is not None and not isinstance(doc, dict):
            raise ValueError(f"config file {config_file} must be a mapping of keys to values, "
                             f"not a {type(doc).__name__}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": config_file})
        _ts_values: ClassVar[dict[str, Any]] = ts_values or {}
        _personality: ClassVar[dict[str, Any]] = personality or {}

    given = {k: v for k, v in overrides.items() if v is not None}
    return _FromFile(**given)
