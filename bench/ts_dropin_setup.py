"""What ``ts_dropin.py`` measures with, made from nothing but this checkout: the TorchServe venv,
the two TorchScript models, their archives (built by ``torch-model-archiver`` with the
TorchServe-style handler ``ts_dropin_handler.py``), the request bodies and the one
``config.properties`` both servers read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VENV = HERE / "out" / "ts-venv"
# TorchServe 0.12 as released, on the torch modelserve is locked to; py-spy for --profile
TS_PACKAGES = ["torch==2.13.0", "torchserve==0.12.0", "torch-model-archiver==0.12.0",
               "psutil", "pyyaml", "py-spy"]
LOCAL_WHEELS = Path("/opt/wheels")  # a local wheel cache (torch's CPU wheel), used if present
HANDLER = HERE / "ts_dropin_handler.py"
# name -> per-sample input shape; the two models
MODELS = {"linear": [16], "resnetish": [3, 64, 64]}
BATCH = {"batchSize": 8, "maxBatchDelay": 5, "minWorkers": 1, "maxWorkers": 1,
         "responseTimeout": 120}
LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="STDOUT" target="SYSTEM_OUT">
    <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console></Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="STDOUT"/></Root></Loggers>
</Configuration>
"""


def ensure_venv(venv: Path) -> Path:
    """TorchServe 0.12 and torch-model-archiver in their own venv (created once; a stamp file
    says it is complete). TorchServe itself also needs Java 17 on PATH."""
    python = venv / "bin" / "python"
    stamp = venv / ".ts_dropin_installed"
    if stamp.exists():
        return python
    if not python.exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    links = ["--find-links", str(LOCAL_WHEELS)] if LOCAL_WHEELS.is_dir() else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", *links, *TS_PACKAGES],
                   check=True)
    stamp.write_text("\n".join(TS_PACKAGES) + "\n")
    return python


def check_venv(venv: Path) -> Path:
    """The venv's python, or exit saying how to make it."""
    python = venv / "bin" / "python"
    for tool in ("torchserve", "torch-model-archiver"):
        if not (venv / "bin" / tool).exists():
            sys.exit(f"{venv} has no {tool}: run with --setup once (creates {DEFAULT_VENV}), "
                     "or point --ts-venv at a venv with torchserve==0.12.0")
    return python


def build_models(work: Path) -> dict[str, Path]:
    """``linear.pt`` (Linear 16->4) and ``resnetish.pt`` (modelserve's ResNet-18-style example
    for 3x64x64), TorchScript, seeded weights."""
    import torch

    from modelserve.examples import resnet

    torch.manual_seed(0)
    linear = torch.jit.script(torch.nn.Linear(16, 4).eval())
    net = torch.jit.trace(resnet.build(), torch.rand(2, *MODELS["resnetish"]))
    paths = {"linear": work / "linear.pt", "resnetish": work / "resnetish.pt"}
    linear.save(str(paths["linear"]))
    net.save(str(paths["resnetish"]))
    return paths


def build_archives(venv: Path, store: Path, work: Path) -> dict[str, str]:
    """One ``.mar`` per model from ``torch-model-archiver``: serialized file and handler, no
    model-config.yaml (config.properties carries the batching, as the issue's recipe does)."""
    store.mkdir(parents=True, exist_ok=True)
    archives = {}
    for name, pt in build_models(work).items():
        subprocess.run([str(venv / "bin" / "torch-model-archiver"), "--model-name", name,
                        "--version", "1.0", "--serialized-file", str(pt), "--handler",
                        str(HANDLER), "--export-path", str(store), "--force"], check=True)
        archives[name] = f"{name}.mar"
    return archives


def bodies() -> dict[str, bytes]:
    """The JSON body per model: a (nested) list of numbers, 4 decimals, seeded."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in MODELS.items():
        x = np.round(rng.random(shape), 4)
        out[name] = json.dumps(x.tolist()).encode()
    return out


def config_properties(path: Path, ports: list[int], archives: dict[str, str]) -> str:
    """TorchServe's config.properties, as a user writes it for these two models; both servers
    read this file. Returns its text."""
    log4j = path.parent / "log4j2.xml"
    log4j.write_text(LOG4J2)
    models = {name: {"1.0": {"defaultVersion": True, "marName": mar, **BATCH}}
              for name, mar in archives.items()}
    text = "\n".join([
        f"inference_address=http://127.0.0.1:{ports[0]}",
        f"management_address=http://127.0.0.1:{ports[1]}",
        f"metrics_address=http://127.0.0.1:{ports[2]}",
        f"grpc_inference_port={ports[3]}",
        f"grpc_management_port={ports[4]}",
        "default_workers_per_model=1",
        "disable_system_metrics=true",
        "disable_token_authorization=true",
        f"models={json.dumps(models)}",
        # TorchServe's logging down to WARN (its access log and per-request lines off)
        f"vmargs=-Dlog4j.configurationFile=file://{log4j}",
    ]) + "\n"
    path.write_text(text)
    return text


def server_env(work: Path, bin_dir: Path | None = None) -> dict[str, str]:
    """Each server gets its own TMPDIR (TorchServe's pid file lives there, and modelserve
    torchserve's too) and log folders under ``work``."""
    for sub in ("tmp", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "LOG_LOCATION": str(work / "logs"),
           "METRICS_LOCATION": str(work / "logs")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env
