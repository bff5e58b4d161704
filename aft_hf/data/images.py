"""Decoding and preprocessing of single images: any PIL mode in, a [0, 1] RGB tensor out.

Preprocessing follows docs/method.md#preprocessing: the checkpoint's own image processor's resize and
crop (:class:`ImageGeometry`; CLIP's: bicubic resize of the shortest edge, centre crop), to tensor, *no*
normalisation (the model wrapper normalises, so attack budgets are in pixels).

Decoding is defensive, because training, evaluation and explanation all read files they did not
write: the size in the file header is checked *before* any pixel is decoded (a 1 x 100000 image
would otherwise be resized to 224 x 22.4M pixels), the EXIF orientation is applied (a phone photo
is seen upright, as every viewer shows it), and an animated image gives its first frame.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import AftError

logger = logging.getLogger(__name__)

# What a broken file typically raises while PIL decodes it. Kept for callers that name them;
# the data pipeline itself skips on *any* exception from decoding (see ``aft_hf.data.loading``).
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageModeError(AftError, ValueError):
    """An image mode that cannot be turned into RGB."""


class GeometryError(AftError, ValueError):
    """A model's image processor that does not produce the input size the model takes."""


class ImageRejected(ValueError):
    """An image refused from its header (too many pixels, extreme aspect ratio) before decoding."""


@dataclass(frozen=True)
class ImageLimits:
    """What an image may declare in its header before we agree to decode it."""

    max_pixels: int = 64_000_000
    max_aspect_ratio: float = 50.0

    def check(self, size: tuple[int, int]) -> None:
        """Raise :class:`ImageRejected` if a ``(width, height)`` is out of bounds."""
        w, h = size
        if w <= 0 or h <= 0:
            raise ImageRejected(f"empty image ({w} x {h})")
        if w * h > self.max_pixels:
            raise ImageRejected(f"{w} x {h} = {w * h} pixels is over the limit of {self.max_pixels} "
                                "(data.max_image_pixels)")
        if max(w, h) / min(w, h) > self.max_aspect_ratio:
            raise ImageRejected(f"{w} x {h} has an aspect ratio over {self.max_aspect_ratio:g} "
                                "(data.max_aspect_ratio)")


DEFAULT_LIMITS = ImageLimits()


def _open_lazily(value: Any) -> Image.Image:
    """``Image.open`` on what a ``datasets`` image column holds: a path, bytes, or {'bytes', 'path'}."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("image entry holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        return Image.open(value)
    raise ValueError(f"cannot read an image from a {type(value).__name__}")


def _upright_first_frame(image: Image.Image) -> Image.Image:
    """Decode the first frame and apply the EXIF orientation; returns an image detached from any file."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image.load()  # decode now, so a truncated file fails here and not later
    try:
        return ImageOps.exif_transpose(image)  # a transposed image, or a copy when there is nothing to do
    except Exception as e:  # a malformed EXIF block: the pixels are still good, keep them as stored
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
        return image.copy()


def open_image(value: Any, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open what a ``datasets`` image column holds (a PIL image, a path, bytes, or {'bytes', 'path'}).

    The header size is checked against ``limits`` before decoding (:class:`ImageRejected`); the
    result is the first frame, upright (EXIF orientation applied), fully decoded.
    """
    if isinstance(value, Image.Image):
        limits.check(value.size)
        return _upright_first_frame(value)
    with _open_lazily(value) as image:
        limits.check(image.size)
        return _upright_first_frame(image)


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


GEOMETRY_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size")


class ImageGeometry:
    """How an image becomes a model's ``size`` x ``size`` input: its checkpoint's own image processor.

    Only the processor's geometry runs here (resize and centre crop as its ``preprocessor_config.json``
    says: shortest edge then crop for CLIP, a plain squash to ``height`` x ``width`` when
    ``do_center_crop`` is false, its resampling filter); rescaling and normalisation are left to the
    model wrapper, so pixels stay in [0, 1] and attack budgets in pixel units. Without a processor
    (``None``) it is CLIP's: :func:`resize_center_crop`. Picklable (DataLoader workers); masks go
    through the same call as their images, so they line up.
    """

    def __init__(self, size: int, processor: Any = None):
        self.size, self.processor = int(size), processor
        if processor is not None:  # a processor that cannot give the model's input fails here, not per image
            self(Image.new("RGB", (self.size + 7, self.size + 3)))

    @classmethod
    def of(cls, spec: Union[int, "ImageGeometry"]) -> "ImageGeometry":
        """An int is the processor-less geometry of that size (callers that only know the size)."""
        return spec if isinstance(spec, ImageGeometry) else cls(spec)

    @property
    def settings(self) -> dict:
        """The processor fields that decide the geometry ({} without a processor)."""
        if self.processor is None:
            return {}
        d = self.processor.to_dict()
        return {k: d.get(k) for k in GEOMETRY_KEYS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageGeometry) and (self.size, self.settings) == (other.size, other.settings)

    def __hash__(self) -> int:
        return hash((self.size, repr(self.settings)))

    def __repr__(self) -> str:
        return f"ImageGeometry({self.size}, {self.settings or 'resize shortest edge + centre crop'})"

    def __call__(self, image: Image.Image) -> Image.Image:
        """An RGB (or L) image -> the model's input geometry, same mode."""
        if self.processor is None:
            return resize_center_crop(image, self.size)
        mode = image.mode
        arr = self.processor(images=image.convert("RGB"), do_rescale=False, do_normalize=False,
                             return_tensors="np")["pixel_values"][0]
        if arr.shape[-2:] != (self.size, self.size):
            raise GeometryError(f"the model's image processor ({self.settings}) gives {arr.shape[-1]}x{arr.shape[-2]} "
                                 f"images but the model takes {self.size}x{self.size}")
        out = Image.fromarray(np.clip(np.asarray(arr), 0, 255).astype(np.uint8).transpose(1, 2, 0), mode="RGB")
        return out if mode == "RGB" else out.convert(mode)


def image_geometry(encoder: Any) -> ImageGeometry:
    """The input geometry of an :class:`aft_hf.model.ImageEncoder`: its size and its own image processor."""
    return ImageGeometry(encoder.image_size, getattr(encoder, "image_processor", None))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def preprocess(value: Any, size: Union[int, ImageGeometry], limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Open, convert to RGB, bring to the model's geometry (``size``: an :class:`ImageGeometry`, or a
    side for CLIP's resize + centre crop) and tensorise one image. Raises on a bad file."""
    return to_tensor(ImageGeometry.of(size)(to_rgb(open_image(value, limits))))


class UnreadableImageError(AftError, ValueError):
    """An image file the user named explicitly cannot be read."""


def load_images(paths: Union[str, Path, list[Union[str, Path]]], size: Union[int, ImageGeometry],
                limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """A batch (B, 3, size, size) in [0, 1] from image files; any failure names the bad file.

    One path (a string) is a batch of one, not a sequence of one-character paths.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tensors = []
    for p in paths:
        try:
            tensors.append(preprocess(str(p), size, limits))
        except Exception as e:  # any decoder failure, not a fixed list: the message names the file
            raise UnreadableImageError(f"cannot read image '{p}': {e}") from e
    return torch.stack(tensors)


def load_readable_images(paths: list[Union[str, Path]], size: Union[int, ImageGeometry], limits: ImageLimits = DEFAULT_LIMITS,
                         max_logged: int = 10, max_bad_fraction: float = 1.0) -> tuple[torch.Tensor, list[int]]:
    """Like :func:`load_images`, but unreadable files are skipped: returns the batch and kept indices.

    The first ``max_logged`` failures are logged by path, then one line counts the rest. The
    batch is empty (0, 3, size, size) when nothing could be read. More than ``max_bad_fraction``
    unreadable files (judged once 20 were read) is a ``DataError``, as in training.
    """
    from .quality import BadSamples

    bad = BadSamples(max_bad_fraction, f"{len(paths)} image files", max_logged=max_logged)
    tensors, kept = [], []
    for i, p in enumerate(paths):
        try:
            tensors.append(preprocess(str(p), size, limits))
            kept.append(i)
            bad.good()
        except Exception as e:
            bad.bad(str(p), e)
    bad.check()  # the share over every file, also when the bad ones came first
    failed = bad.skipped
    if failed > max_logged:
        logger.warning("skipped %d unreadable images in all (%d not listed)", failed, failed - max_logged)
    side = ImageGeometry.of(size).size
    return (torch.stack(tensors) if tensors else torch.empty(0, 3, side, side)), kept
