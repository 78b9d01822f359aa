"""Build the example archives: digits and resnet, each as TorchScript and as ONNX."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
import yaml

from modelserve.archive import create_archive
from modelserve.examples import digits, resnet

log = logging.getLogger(__name__)

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(path))
    return path


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """ONNX with a dynamic batch dimension, so the batcher can send any batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    return path


def archive_model(store: Path, name: str, serialized: Path, config: dict,
                  extra: list[Path] | None = None, model_file: Path | None = None) -> Path:
    """A tensor_handler archive of ``serialized`` with ``config`` as its model-config.yaml."""
    config_path = serialized.parent / f"{name}-model-config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return create_archive(
        model_name=name, version="1.0", handler="tensor_handler", serialized_file=serialized,
        model_file=model_file, config_file=config_path,
        extra_files=",".join(str(p) for p in extra or []) or None, export_path=store,
        force=True,
    )


def serving(handler: dict) -> dict:
    return {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5,
            "responseTimeout": 120, "handler": handler}


def build_digits(store: Path, work: Path) -> tuple[list[Path], float]:
    trained = digits.train()
    example = torch.from_numpy(trained.test_inputs[:2])
    labels = work / "index_to_name.json"
    labels.write_text(json.dumps({str(i): n for i, n in enumerate(DIGIT_NAMES)}))
    config = serving({"input_shape": digits.INPUT_SHAPE, "image_mode": "L",
                       "image_scale": 16 / 255, "softmax": True, "top_k": 1})
    ts = export_torchscript(trained.model, example, work / "digits.pt")
    onnx = export_onnx(trained.model, example, work / "digits.onnx")
    archives = [
        archive_model(store, "digits", ts, config, [labels]),
        archive_model(store, "digits_onnx", onnx, config, [labels]),
    ]
    return archives, trained.test_accuracy


def build_resnet(store: Path, work: Path) -> list[Path]:
    model = resnet.build()
    example = torch.randn(2, *resnet.INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    config = serving({"input_shape": resnet.INPUT_SHAPE, "image_mode": "RGB",
                       "softmax": True, "top_k": 5})
    ts = export_torchscript(model, example, work / "resnet.pt")
    onnx = export_onnx(model, example, work / "resnet.onnx")
    return [archive_model(store, "resnet", ts, config, []),
            archive_model(store, "resnet_onnx", onnx, config, [])]


def build_all(store: Path) -> list[Path]:
    """Write digits.mar, digits_onnx.mar, resnet.mar and resnet_onnx.mar into ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelserve-examples-") as tmp:
        work = Path(tmp)
        digit_archives, accuracy = build_digits(store, work)
        print(f"digits: test accuracy {accuracy:.4f} on the held-out 20% of sklearn digits")
        return digit_archives + build_resnet(store, work)
