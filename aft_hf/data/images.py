"""Decoding and preprocessing of single images: any PIL mode in, a [0, 1] RGB tensor out.

Preprocessing follows docs/method.md#preprocessing: bicubic resize of the shortest edge, centre crop,
to tensor, *no* normalisation (the model wrapper normalises, so attack budgets are in pixels).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import AftError

# What a broken file raises while PIL decodes it (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageModeError(AftError, ValueError):
    """An image mode that cannot be turned into RGB."""


def open_image(value: Any) -> Image.Image:
    """Open what a ``datasets`` image column holds: a PIL image, a path, bytes, or {'bytes', 'path'}."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("image entry holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, Path)):
        image = Image.open(value)
    else:
        raise ValueError(f"cannot read an image from a {type(value).__name__}")
    image.load()  # decode now, so a truncated file fails here and not later
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images to 8 bits (a plain convert saturates them)."""
    arr = np.asarray(image)
    if image.mode == "F":
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        arr = arr * scale
    elif arr.dtype != np.uint8:
        peak = arr.max() if arr.size else 0
        if image.mode.startswith("I;16") or peak > 255:
            arr = arr / 257.0 if peak <= 65535 else arr / (peak / 255.0)
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB: grey, palette, CMYK, YCbCr, 16-bit, float; alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _to_8bit(image).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise ImageModeError(f"unsupported image mode '{mode}'")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shortest edge to ``size``, then a centre crop to ``size`` x ``size``."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def preprocess(value: Any, size: int) -> torch.Tensor:
    """Open, convert to RGB, resize, centre-crop and tensorise one image. Raises on a bad file."""
    return to_tensor(resize_center_crop(to_rgb(open_image(value)), size))


def load_images(paths: list[Union[str, Path]], size: int) -> torch.Tensor:
    """A batch (B, 3, size, size) in [0, 1] from image files; errors name the bad file."""
    tensors = []
    for p in paths:
        try:
            tensors.append(preprocess(str(p), size))
        except DECODE_ERRORS as e:
            raise ValueError(f"cannot read image '{p}': {e}") from e
    return torch.stack(tensors)
