"""TorchServe's built-in handlers, loaded as the worker loads them, against tiny seeded models.

Each answer is checked against the model run directly on inputs prepared here independently
(Pillow + numpy), so both the preprocessing and the postprocessing are covered.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from modelserve.handlers.errors import BadInputError, PredictionException
from modelserve.handlers.vision import center_crop, resize_shorter, to_tensor
from modelserve.worker.codec import encode_response
from modelserve.worker.context import Context
from modelserve.worker.loader import load_entry

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# -- inputs and reference preprocessing -------------------------------------------------------
def png(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def reference_imagenet(data: bytes) -> torch.Tensor:
    """Resize(256) / CenterCrop(224) / ToTensor / Normalize, written out with Pillow crops."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    left, top = round((image.width - 224) / 2), round((image.height - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(image, dtype=np.float32) / 255 - MEAN) / STD
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


# -- archive scaffolding ------------------------------------------------------------------------
def make_model_dir(
    tmp_path: Path, handler: str, model: torch.jit.ScriptModule, files: dict | None = None
) -> tuple[object, Context]:
    model_dir = tmp_path / handler
    model_dir.mkdir()
    model.save(str(model_dir / "model.pt"))
    for name, content in (files or {}).items():
        if name.endswith(".json"):
            (model_dir / name).write_text(json.dumps(content))
        else:
            torch.save(content, model_dir / name)
    manifest = {
        "model": {
            "modelName": handler,
            "modelVersion": "1.0",
            "serializedFile": "model.pt",
            "handler": handler,
        }
    }
    context = Context(handler, str(model_dir), manifest, 4, gpu=None, model_yaml_config={})
    return load_entry(handler, model_dir, context), context


def serve(entry, context: Context, bodies: list) -> list:
    context.begin_batch([f"id{i}" for i in range(len(bodies))], [{} for _ in bodies])
    return entry([{"body": body} for body in bodies], context)


def assert_bad_request(result, context: Context, idx: int) -> None:
    assert isinstance(result, BadInputError), result
    assert encode_response(result, idx, context)[0] == 400


# -- models ---------------------------------------------------------------------------------------
class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * 4


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(x)}


class TinySegmenterTensor(TinySegmenter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(x)


class TinyDetector(nn.Module):
    """Boxes from the image's own size and mean, so the test sees what the model was given."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for image in images:
            full = torch.tensor([0.0, 0.0, float(image.shape[2]), float(image.shape[1])])
            boxes = torch.stack([full, full * image.mean(), full * 0.5])
            out.append({
                "boxes": boxes,
                "labels": torch.tensor([1, 2, 3]),
                "scores": torch.tensor([0.9, 0.5, 0.49]),
            })
        return out


class TinyText(nn.Module):
    def __init__(self, vocab_size: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, 16, mode="mean")
        self.fc = nn.Linear(16, classes)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(text, offsets)) * 3


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    for p in module.parameters():  # re-seed so every model here is deterministic
        nn.init.normal_(p, std=0.5)
    return torch.jit.script(module.eval())


# -- vision helpers -----------------------------------------------------------------------------
def test_resize_keeps_aspect_and_crop_pads_small_images():
    image = Image.new("RGB", (500, 375))
    assert resize_shorter(image, 256).size == (341, 256)
    assert resize_shorter(Image.new("RGB", (30, 40)), 256).size == (256, 341)
    tensor = to_tensor(Image.new("RGB", (5, 3), (255, 0, 51)))
    assert tensor.shape == (3, 3, 5) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    cropped = center_crop(tensor, 4)
    assert cropped.shape == (3, 4, 4)
    # torchvision pads (size - h) // 2 on top and the rest below, then crops round((w - size) / 2)
    assert torch.equal(cropped[:, :3], tensor[:, :, :4]) and cropped[:, 3].abs().sum() == 0
    wide = center_crop(tensor, 8)
    assert torch.equal(wide[:, 2:5, 1:6], tensor) and wide.abs().sum() == tensor.abs().sum()


# -- image_classifier ---------------------------------------------------------------------------
IMAGENET_STYLE = {str(i): [f"n0{i}", f"class_{i}"] for i in range(10)}


@pytest.fixture(scope="module")
def classifier_model() -> torch.jit.ScriptModule:
    return scripted(TinyClassifier())


def expected_top(model, data: bytes, k: int) -> tuple[list[int], torch.Tensor]:
    with torch.no_grad():
        probs = torch.softmax(model(reference_imagenet(data)[None]), dim=1)[0]
    top = torch.topk(probs, k)
    return top.indices.tolist(), top.values


def test_image_classifier_top5_labels_and_probs(tmp_path, classifier_model):
    entry, ctx = make_model_dir(
        tmp_path, "image_classifier", classifier_model, {"index_to_name.json": IMAGENET_STYLE}
    )
    images = [png(40, 30, 1), png(24, 64, 2, "L"), png(33, 33, 3, "RGBA")]
    bodies = [images[0], b"this is not an image", base64.b64encode(images[1]).decode(),
              bytearray(images[2])]
    results = serve(entry, ctx, bodies)
    assert len(results) == 4
    assert_bad_request(results[1], ctx, 1)
    assert "cannot decode image" in results[1].message
    for result, image in zip([results[0], results[2], results[3]], images):
        classes, probs = expected_top(classifier_model, image, 5)
        assert list(result) == [f"class_{c}" for c in classes]
        assert torch.allclose(torch.tensor(list(result.values())), probs, atol=1e-5)
    assert encode_response(results[0], 0, ctx)[0] == 200


def test_image_classifier_without_mapping_uses_indices_and_topk(tmp_path, classifier_model):
    entry, ctx = make_model_dir(tmp_path, "image_classifier", classifier_model)
    handler = entry.__self__
    handler.set_max_result_classes(3)
    assert handler.get_max_result_classes() == 3
    image = png(50, 20, 4)
    (result,) = serve(entry, ctx, [image])
    classes, probs = expected_top(classifier_model, image, 3)
    assert list(result) == [str(c) for c in classes]
    assert torch.allclose(torch.tensor(list(result.values())), probs, atol=1e-5)


def test_describe_and_explain_headers_take_base_handler_paths(tmp_path, classifier_model):
    entry, ctx = make_model_dir(tmp_path, "image_classifier", classifier_model)
    ctx.begin_batch(["id0"], [{"describe": "True"}])
    assert entry([{"body": b""}], ctx) == [None]
    ctx.begin_batch(["id0"], [{"explain": "True"}])
    with pytest.raises(PredictionException) as info:
        entry([{"body": png(30, 30, 5)}], ctx)
    assert info.value.error_code == 501


@pytest.mark.parametrize("kind", ["base", "vision", "tensor"])
def test_describe_and_explain_routing_is_shared(tmp_path, classifier_model, kind):
    """BaseHandler, the per-request vision path and TensorHandler route the describe and
    explain headers alike; only TensorHandler hands explain_handle no preprocessed batch."""
    from modelserve.handlers.base_handler import BaseHandler
    from modelserve.handlers.tensor_handler import TensorHandler
    from modelserve.handlers.vision import VisionHandler

    base = {"base": BaseHandler, "vision": VisionHandler, "tensor": TensorHandler}[kind]

    class Explaining(base):  # type: ignore[misc, valid-type]
        def describe_handle(self):
            return {"kind": kind}

        def explain_handle(self, data_preprocess, raw_data):
            return [type(data_preprocess).__name__ for _ in raw_data]

    _, ctx = make_model_dir(tmp_path, "tensor_handler", classifier_model)
    handler = Explaining()
    handler.initialize(ctx)
    body = [[[0.5] * 4] * 4] * 3 if kind == "base" else png(30, 30, 5)
    ctx.begin_batch(["id0"], [{"describe": "True"}])
    assert handler.handle([{"body": body}], ctx) == [{"kind": kind}]
    assert not [e for e in ctx.metrics.drain() if e[1] == "HandlerTime"]
    ctx.begin_batch(["id0"], [{"explain": "True"}])
    assert handler.handle([{"body": body}], ctx) == [
        "NoneType" if kind == "tensor" else "Tensor"]
    assert [e for e in ctx.metrics.drain() if e[1] == "HandlerTime"]


def test_image_classifier_batch_of_only_bad_inputs(tmp_path, classifier_model):
    entry, ctx = make_model_dir(tmp_path, "image_classifier", classifier_model)
    results = serve(entry, ctx, [png(30, 30, 5)[:60], "%%% not base64 %%%", {"x": 1}])
    for idx, result in enumerate(results):
        assert_bad_request(result, ctx, idx)


# -- image_segmenter ----------------------------------------------------------------------------
@pytest.mark.parametrize("model_cls", [TinySegmenter, TinySegmenterTensor])
def test_image_segmenter_per_pixel_class_and_prob(tmp_path, model_cls):
    model = scripted(model_cls())
    entry, ctx = make_model_dir(tmp_path, "image_segmenter", model)
    image = png(40, 30, 6)
    results = serve(entry, ctx, [image, b"\x89PNG broken"])
    assert_bad_request(results[1], ctx, 1)
    answer = torch.tensor(results[0])
    assert answer.shape == (224, 224, 2)
    with torch.no_grad():
        out = model(reference_imagenet(image)[None])
    scores = out["out"] if isinstance(out, dict) else out
    best, classes = torch.softmax(scores, dim=1)[0].max(dim=0)
    assert torch.equal(answer[..., 0], classes.float())
    assert torch.allclose(answer[..., 1], best, atol=1e-5)
    assert set(answer[..., 0].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


# -- object_detector ----------------------------------------------------------------------------
def test_object_detector_thresholds_and_names(tmp_path):
    names = {"1": "cat", "2": "dog", "3": "bird"}
    entry, ctx = make_model_dir(
        tmp_path, "object_detector", scripted(TinyDetector()), {"index_to_name.json": names}
    )
    images = [png(40, 30, 7), png(17, 23, 8)]
    results = serve(entry, ctx, [images[0], b"GIF89a nonsense", images[1]])
    assert_bad_request(results[1], ctx, 1)
    for result, image in zip([results[0], results[2]], images):
        width, height = Image.open(io.BytesIO(image)).size
        mean = float(np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32).mean() / 255)
        assert len(result) == 2  # 0.9 and 0.5 kept, 0.49 dropped
        assert result[0] == {"cat": [0.0, 0.0, float(width), float(height)],
                             "score": pytest.approx(0.9)}
        assert set(result[1]) == {"dog", "score"} and result[1]["score"] == 0.5
        expected = [0.0, 0.0, width * mean, height * mean]
        assert result[1]["dog"] == pytest.approx(expected, rel=1e-5)


def test_object_detector_without_mapping_uses_indices(tmp_path):
    entry, ctx = make_model_dir(tmp_path, "object_detector", scripted(TinyDetector()))
    (result,) = serve(entry, ctx, [base64.b64encode(png(8, 8, 9)).decode()])
    assert [next(iter(d)) for d in result] == ["1", "2"]


# -- text_classifier ----------------------------------------------------------------------------
TOKENS = ["i", "am", "happy", "i am", "am happy", "do", "not", "like", "do not", "not like",
          "it", "cafe", "<unk>"]
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}


def direct_text(model, ids: list[int]) -> dict[str, float]:
    with torch.no_grad():
        logits = model(torch.tensor(ids), torch.tensor([0]))
    return dict(zip(LABELS.values(), torch.softmax(logits, dim=1)[0].tolist()))


@pytest.mark.parametrize("vocab_kind", ["dict", "list"])
def test_text_classifier_matches_direct_computation(tmp_path, vocab_kind):
    tokens = TOKENS if vocab_kind == "dict" else TOKENS[:-1]  # the list has no "<unk>"
    vocab = {t: i for i, t in enumerate(tokens)} if vocab_kind == "dict" else tokens
    unk = 12 if vocab_kind == "dict" else 0
    model = scripted(TinyText(len(TOKENS), 3))
    entry, ctx = make_model_dir(
        tmp_path, "text_classifier", model,
        {"source_vocab.pt": vocab, "index_to_name.json": LABELS},
    )
    bodies = ["I'm <b>HAPPY</b>!", b"\xff\xfe not utf-8", "I don\u2019t like it, caf\u00e9."]
    results = serve(entry, ctx, [bodies[0], bodies[1], bodies[2].encode()])
    assert len(results) == 3
    assert_bad_request(results[1], ctx, 1)
    # "i am happy" + bigrams; "i do not like it cafe" + bigrams ("i do", "like it", ... unknown)
    expected = [
        direct_text(model, [0, 1, 2, 3, 4]),
        direct_text(model, [0, 5, 6, 7, 10, 11, unk, 8, 9, unk, unk]),
    ]
    for result, want in zip([results[0], results[2]], expected):
        assert list(result) == list(LABELS.values())
        assert sum(result.values()) == pytest.approx(1.0)
        assert result == pytest.approx(want, abs=1e-6)


def test_text_classifier_needs_vocab(tmp_path):
    with pytest.raises(FileNotFoundError, match="source_vocab.pt"):
        make_model_dir(tmp_path, "text_classifier", scripted(TinyText(4, 2)))


def test_a_request_without_payload_says_what_to_send():
    """curl's -d/--data-binary default type is a form; a body with no data/body field gets a
    400 that says how to send an image or a text instead of "got NoneType"."""
    from modelserve.handlers.errors import BadInputError
    from modelserve.handlers.text_classifier import _as_text
    from modelserve.handlers.vision import open_image

    for call, what in ((lambda: open_image(None), "an image"), (lambda: _as_text(None), "text")):
        with pytest.raises(BadInputError) as info:
            call()
        message = info.value.message
        assert what in message and "curl -T FILE" in message and "'data'" in message
        assert "NoneType" not in message


def test_a_handlers_own_transform_gets_the_image_in_its_own_mode():
    """TorchServe's VisionHandler opens the image and applies the handler's image_processing
    as it is: a grayscale MNIST digit stays one channel. The built-in ImageNet pipeline
    converts to RGB (its models take 3 channels)."""
    from modelserve.handlers.vision import imagenet_transform, load_image, to_tensor

    buf = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buf, format="PNG")
    assert load_image(buf.getvalue(), to_tensor).shape == (1, 28, 28)
    assert load_image(buf.getvalue(), imagenet_transform).shape == (3, 224, 224)
