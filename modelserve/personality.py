"""The TorchServe personality: the defaults that differ when the server runs as TorchServe.

``modelserve start`` keeps modelserve's defaults. ``--ts-config`` (and ``modelserve
torchserve``) lay these under everything the user configured, so a TorchServe deployment sees
TorchServe 0.12's behaviour while config.yaml, the environment and flags can still choose
otherwise. One code path: each difference is a setting, never a branch on the personality.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def torchserve_defaults(ts_values: Mapping[str, Any]) -> dict[str, Any]:
    """TorchServe's defaults where they differ from modelserve's, given what its
    config.properties set (``ts_values``, already mapped onto settings)."""
    defaults: dict[str, Any] = {
        # NettyUtils.getIntParameter / Boolean.parseBoolean: lenient query values
        "strict_params": False,
        # TokenAuthorization: the key file is written in the working directory
        "key_file": Path("key_file.json"),
    }
    if "default_workers_per_model" not in ts_values:
        # ConfigManager.getConfiguredDefaultWorkersPerModel: 0 when unset, so POST /models
        # starts no worker unless asked (ApiUtils.handleRegister)
        defaults["registration_workers"] = 0
    return defaults
