"""The TorchServe personality: the defaults that differ when the server runs as TorchServe.

``modelserve start`` keeps modelserve's defaults. ``--ts-config`` (and ``modelserve
torchserve``) lay these under everything the user configured, so a TorchServe deployment sees
TorchServe 0.12's behaviour while config.yaml, the environment and flags can still choose
otherwise. One code path: each difference is a setting, never a branch on the personality.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def torchserve_defaults(ts_values: Mapping[str, Any],
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """TorchServe's defaults where they differ from modelserve's, given what its
    config.properties set (``ts_values``, already mapped onto settings) and the environment
    (``env``, default ``os.environ``)."""
    environ = os.environ if env is None else env
    defaults: dict[str, Any] = {
        # NettyUtils.getIntParameter / Boolean.parseBoolean: lenient query values
        "strict_params": False,
        # TokenAuthorization: the key file is written in the working directory
        "key_file": Path("key_file.json"),
        # ConfigManager.isModelApiEnabled: off unless enable_model_api / --enable-model-api
        "enable_model_api": False,
        # WorkerThread: a batch past the response timeout is "Worker died.", 500
        "timeout_status": 500,
        # TokenAuthorizationHandler: a bad key is an InvalidKeyException, a ModelException: 400
        "auth_failure_status": 400,
        # ConfigManager.getTimeToExpiration: keys expire 60 minutes after they are made
        "token_expiration_min": 60.0,
        # SnapshotManager: logs/config/*.cfg snapshots, not modelserve's models.json
        "ts_config_snapshots": True,
        "model_snapshot": False,
        # log4j2.xml: access_log.log, model_log.log, ts_log.log in $LOG_LOCATION (else logs),
        # ts_metrics.log, model_metrics.log in $METRICS_LOCATION (else logs); every request
        # in the access log (NettyUtils, Session.toString); metrics as log lines
        # (ConfigManager.getMetricsMode: log)
        "log_dir": Path(environ.get("LOG_LOCATION") or "logs"),
        "metrics_log_dir": Path(environ.get("METRICS_LOCATION") or "logs"),
        "access_log": True,
        "access_log_format": "torchserve",
        "metrics_mode": "log",
        # WorkerThread / BatchAggregator: worker start failures in TorchServe's words
        "lifecycle_log": "torchserve",
        # MetricBuilder / PrometheusMetricsRequestHandler: /metrics holds what the metrics
        # mode puts there, in the Java client's format
        "metrics_exposition": "torchserve",
        # ConfigManager.getGRPCPort / getGRPCAddress: TorchServe's gRPC inference and
        # management APIs on 127.0.0.1:7070 and :7071
        "grpc_torchserve_inference_port": 7070,
        "grpc_torchserve_management_port": 7071,
        "grpc_torchserve_host": "127.0.0.1",
        # Java's TLS accepts 1024-bit RSA keys (TorchServe's own test certificate is one)
        "tls_security_level": 1,
    }
    if "default_workers_per_model" not in ts_values:
        # ConfigManager.getConfiguredDefaultWorkersPerModel: 0 when unset, so POST /models
        # starts no worker unless asked (ApiUtils.handleRegister)
        defaults["registration_workers"] = 0
    return defaults
