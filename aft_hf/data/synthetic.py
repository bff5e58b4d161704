"""Small synthetic image sets made on the fly, for offline runs and tests.

``builtin:shapes`` is a folder of PNGs (one coloured shape on a noisy background each),
written once to the aft_hf cache and then loaded through the ordinary ``imagefolder`` path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
BUILTIN_DATASETS = {"builtin:shapes": dict(num_images=256, size=48, seed=0)}


def draw_shape_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, str]:
    """One RGB image with a random shape in a random colour; returns (image, colour, shape)."""
    background = rng.integers(60, 196, size=3)
    noise = rng.normal(0, 25, size=(size, size, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    r = rng.uniform(0.15, 0.3) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    draw = ImageDraw.Draw(image)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return image, colour, shape


def write_shapes_imagefolder(path: Union[str, Path], num_images: int = 256, size: int = 48, seed: int = 0) -> Path:
    """Write ``num_images`` PNGs into ``path/<colour>_<shape>/`` (an imagefolder with labels)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        image, colour, shape = draw_shape_image(rng, size)
        folder = path / f"{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.png")
    return path


def resolve_builtin_dataset(name: str) -> str:
    """``builtin:shapes`` -> a cached imagefolder path (built on first use); other names unchanged."""
    if not name.startswith("builtin:"):
        return name
    if name not in BUILTIN_DATASETS:
        from .errors import UnknownDatasetError

        raise UnknownDatasetError(f"unknown builtin dataset '{name}' (known: {', '.join(BUILTIN_DATASETS)}); "
                                  "or give a Hub dataset id or a local folder")
    from ..model import cache_dir

    path = cache_dir() / "datasets" / name.split(":", 1)[1]
    if not path.is_dir():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        write_shapes_imagefolder(tmp, **BUILTIN_DATASETS[name])
        try:
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)
