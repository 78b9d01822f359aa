"""Helpers shared by the built-in handlers: TorchServe's VisionHandler input rules and the
torchvision transforms its image handlers use, in plain Pillow + torch (no torchvision).

An image arrives as bytes, a base64 string, or an already preprocessed ``[C][H][W]`` list of
floats. ``handle_per_request`` preprocesses each request on its own, so that one undecodable
image is answered 400 while the rest of the batch still runs through the model together.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modelserve.handlers.base_handler import BaseHandler
from modelserve.handlers.errors import BadInputError, missing_payload

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Image.Image], torch.Tensor]


def row_value(row: dict[str, Any]) -> Any:
    """A request's payload, TorchServe's way: the ``data`` field, else the ``body``."""
    return row.get("data") or row.get("body")


def allow_large_images(context: Any) -> None:
    """Lift Pillow's decompression-bomb limit when the server disables it, as TorchServe does."""
    if not context.system_properties.get("limit_max_image_pixels"):
        Image.MAX_IMAGE_PIXELS = None


def open_image(value: Any) -> Image.Image:
    """A decoded image, in its own mode, from bytes or a base64 string; BadInputError for
    anything Pillow cannot decode (a truncated file, a decompression bomb, a bad palette)."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value)
        except ValueError as exc:  # binascii.Error, or non-ASCII characters
            raise BadInputError(f"image string is not valid base64: {exc}") from None
    if value is None:
        raise missing_payload("an image (bytes or a base64 string)", "image")
    if not isinstance(value, (bytes, bytearray)):
        raise BadInputError(
            f"expected an image (bytes or a base64 string), got {type(value).__name__}"
        )
    if not value:
        raise BadInputError("the request carries no image")
    try:
        image = Image.open(io.BytesIO(value))
        image.load()  # Image.open is lazy: truncated data only fails here
    except Image.DecompressionBombError as exc:
        raise BadInputError(f"image is too large: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadInputError(f"cannot decode image: {exc}") from None
    return image


def decode_image(value: Any) -> Image.Image:
    """An RGB image from bytes or a base64 string; BadInputError when it is neither."""
    image = open_image(value)
    # Models take 3 channels; TorchServe would pass L/RGBA/P images through as 1 or 4 channels.
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """``transforms.Resize(size)``: shorter side to ``size``, aspect kept, bilinear."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, Image.Resampling.BILINEAR)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``transforms.ToTensor()``: a float ``[C, H, W]`` tensor scaled to [0, 1]."""
    pixels = np.array(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)


def center_crop(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``transforms.CenterCrop(size)`` on ``[..., H, W]``, zero-padding an image too small."""
    height, width = tensor.shape[-2:]
    if height < size or width < size:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        padding = [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2]
        tensor = torch.nn.functional.pad(tensor, padding)
        height, width = tensor.shape[-2:]
    top = int(round((height - size) / 2))
    left = int(round((width - size) / 2))
    return tensor[..., top : top + size, left : left + size]


def normalize(
    tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``transforms.Normalize``: per channel ``(x - mean) / std``."""
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def imagenet_transform(image: Image.Image) -> torch.Tensor:
    """Resize(256), CenterCrop(224), ToTensor, ImageNet Normalize: the classifier's pipeline."""
    tensor = center_crop(to_tensor(resize_shorter(image, 256)), 224)
    return normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def load_image(value: Any, transform: Transform) -> torch.Tensor:
    """One request's image as a ``[C, H, W]`` float tensor.

    A nested list is taken as already preprocessed and skips ``transform`` (as in TorchServe).
    """
    if isinstance(value, list):
        try:
            tensor = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BadInputError(f"image list must hold numbers only: {exc}") from None
        if tensor.dim() != 3:
            raise BadInputError(
                f"an image sent as a list must be [C][H][W], got shape {list(tensor.shape)}"
            )
        return tensor
    if transform is imagenet_transform:  # the built-in pipeline takes 3 channels
        return transform(decode_image(value))
    return transform(open_image(value))  # a handler's own transform: the image as it is,
    # as TorchServe's VisionHandler gives it (a grayscale MNIST digit stays 1 channel)


def preprocess_images(
    data: list[dict[str, Any]], transform: Transform, device: torch.device
) -> torch.Tensor:
    """The batch as one ``[N, C, H, W]`` tensor on ``device``."""
    images = [load_image(row_value(row), transform) for row in data]
    return torch.stack(images).to(device)


def label_for(mapping: dict[str, str] | None, index: int) -> str:
    """Class ``index``'s name (mapping as ``load_label_mapping`` reads it), else the index."""
    if not mapping:
        return str(index)
    return str(mapping.get(str(index), index))


def handle_per_request(
    handler: BaseHandler, data: list[dict[str, Any]], context: Any, batch: bool = True
) -> list[Any]:
    """Run ``handler``'s preprocess on each request alone, then the rest of its pipeline.

    A request whose preprocess raises BadInputError gets that error as its result (a 400 for
    it alone). The others are run together: tensors of one shape are concatenated, lists are
    joined. With ``batch=False`` each request goes through the model by itself. Describe and
    explain requests take BaseHandler's path, as in TorchServe.
    """
    handler.context = context
    return handler._route_by_headers(
        data, lambda rows: _per_request(handler, rows, batch))


def _per_request(handler: BaseHandler, data: list[dict[str, Any]], batch: bool) -> list[Any]:
    start = time.perf_counter()
    results: list[Any] = [None] * len(data)
    groups: dict[Any, list[tuple[int, Any]]] = {}
    for idx, row in enumerate(data):
        try:
            item = handler.preprocess([row])
        except BadInputError as exc:
            results[idx] = exc
            continue
        if not batch:
            key: Any = idx
        elif isinstance(item, torch.Tensor):
            key = tuple(item.shape[1:])
        else:
            key = type(item)
        groups.setdefault(key, []).append((idx, item))
    for members in groups.values():
        items = [item for _, item in members]
        if len(items) == 1:
            joined = items[0]
        elif isinstance(items[0], torch.Tensor):
            joined = torch.cat(items)
        else:
            joined = [x for item in items for x in item]
        answers = handler.postprocess(handler.inference(joined))
        if len(answers) != len(members):
            raise RuntimeError(
                f"handler returned {len(answers)} results for {len(members)} requests"
            )
        for (idx, _), answer in zip(members, answers):
            results[idx] = answer
    handler._record_handler_time(start)
    return results


class VisionHandler(BaseHandler):
    """TorchServe's ``VisionHandler``: image requests, preprocessed one by one so that a bad
    image fails only its own request. Subclasses set ``image_processing`` and postprocess."""
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    image_processing = staticmethod(imagenet_transform)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        allow_large_images(context)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        return preprocess_images(data, self.image_processing, self.device)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return handle_per_request(self, data, context)
