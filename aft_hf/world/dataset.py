"""A synthetic captioned world with ground-truth masks, deterministic from a seed.

Each image holds ONE target object (a shape from :data:`SHAPES` in a colour from :data:`COLOURS`,
random size, position and rotation) on a cluttered background (smooth gradients, stripes or
blotches, pixel noise) with a few distractor shapes. A distractor always has a colour OR a shape
outside the caption vocabulary, so "a photo of a {colour} {shape}" names exactly one object.
The target is drawn last, without anti-aliasing, so its mask is exactly its pixels.

Why it is built so: saliency maps of a CLIP trained here can be scored against the mask (the
right answer is known), which pretrained CLIP weights and ImageNet cannot give offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

from ..errors import AftError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 225), "yellow": (240, 215, 30),
}
"""Caption colours (RGB). Saturated and far apart, so the colour word is unambiguous."""
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Caption shapes: distinct silhouettes at every rotation (a rotated square is still a square)."""
DISTRACTOR_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), "brown": (115, 75, 35),
}
"""Colours no caption names (achromatic or dark), used for distractors."""
DISTRACTOR_SHAPES: tuple[str, ...] = ("ring", "bar")
"""Shapes no caption names (a hollow ring, a thin bar), used for distractors."""
CAPTION_TEMPLATE = "a photo of a {colour} {shape}"


class WorldError(AftError, ValueError):
    """Bad world settings; the message names the problem."""


@dataclass
class WorldConfig:
    """Everything that fixes the world's difficulty (sizes are fractions of the image side).

    ``target_size``: range of the target's circumscribed diameter; ``distractor_size`` the same for
    distractors; ``num_distractors`` an inclusive range; ``vocab_colour_distractor_prob`` the share
    of distractors that take a caption colour (then their shape is a non-caption shape);
    ``vocab_shape_distractors`` lets the others (non-caption colours) take caption shapes too;
    ``plain_background`` a flat grey-ish background instead of textures; ``noise_std`` pixel noise
    (0-255 scale); ``colour_jitter`` max per-channel shift of the target; ``max_rotation`` the target's
    rotation range in degrees (+-; 180 = any angle; distractors always take any angle).
    """

    image_size: int = 64
    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(COLOURS))
    shapes: tuple[str, ...] = SHAPES
    target_size: tuple[float, float] = (0.45, 0.75)
    distractor_size: tuple[float, float] = (0.12, 0.25)
    num_distractors: tuple[int, int] = (1, 3)
    vocab_colour_distractor_prob: float = 0.3
    vocab_shape_distractors: bool = False
    plain_background: bool = False
    noise_std: float = 8.0
    colour_jitter: int = 15
    max_rotation: float = 20.0

    def __post_init__(self) -> None:
        self.colours = {k: tuple(int(c) for c in v) for k, v in dict(self.colours).items()}
        self.shapes = tuple(self.shapes)
        self.target_size = tuple(float(x) for x in self.target_size)
        self.distractor_size = tuple(float(x) for x in self.distractor_size)
        self.num_distractors = tuple(int(x) for x in self.num_distractors)
        if self.image_size < 16:
            raise WorldError(f"image_size must be >= 16, got {self.image_size}")
        unknown = [s for s in self.shapes if s not in _POLYGONS and s != "circle"]
        if unknown:
            raise WorldError(f"unknown target shape(s) {unknown}; known: circle, {', '.join(_POLYGONS)}")
        if set(self.shapes) & set(DISTRACTOR_SHAPES) or set(self.colours) & set(DISTRACTOR_COLOURS):
            raise WorldError("caption vocabulary overlaps the distractor vocabulary")
        for name, (lo, hi) in (("target_size", self.target_size), ("distractor_size", self.distractor_size)):
            if not 0 < lo <= hi <= 1:
                raise WorldError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if not 0 <= self.num_distractors[0] <= self.num_distractors[1]:
            raise WorldError(f"num_distractors must be 0 <= min <= max, got {self.num_distractors}")
        if not 0 <= self.max_rotation <= 180:
            raise WorldError(f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}")
        if not self.colours or not self.shapes:
            raise WorldError("the caption vocabulary needs at least one colour and one shape")

    @property
    def class_names(self) -> list[str]:
        """``"{colour} {shape}"`` for every class; label = colour_index * len(shapes) + shape_index."""
        return [f"{c} {s}" for c in self.colours for s in self.shapes]

    @property
    def captions(self) -> list[str]:
        """The caption of every class, in label order (the zero-shot prompts)."""
        return [CAPTION_TEMPLATE.format(colour=c, shape=s) for c in self.colours for s in self.shapes]

    @property
    def words(self) -> list[str]:
        """Every word a caption can use (the word-level tokenizer's vocabulary)."""
        return CAPTION_TEMPLATE.format(colour="", shape="").split() + list(self.colours) + list(self.shapes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldConfig":
        return cls(**d)


@dataclass
class WorldSample:
    """One rendered image: ``image`` (H, W, 3) uint8, ``mask`` (H, W) bool, the target and distractors."""

    image: np.ndarray
    mask: np.ndarray
    colour: str
    shape: str
    label: int
    caption: str
    distractors: list[tuple[str, str]]
    """(colour, shape) of every distractor drawn."""


# unit polygons (circumradius 1, centred); rotated and scaled when drawn
def _regular(n: int, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


_CROSS_ARM = 0.34
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3),
    "cross": [(x * 1 / math.sqrt(1 + _CROSS_ARM ** 2), y * 1 / math.sqrt(1 + _CROSS_ARM ** 2)) for x, y in (
        (-_CROSS_ARM, -1), (_CROSS_ARM, -1), (_CROSS_ARM, -_CROSS_ARM), (1, -_CROSS_ARM), (1, _CROSS_ARM),
        (_CROSS_ARM, _CROSS_ARM), (_CROSS_ARM, 1), (-_CROSS_ARM, 1), (-_CROSS_ARM, _CROSS_ARM), (-1, _CROSS_ARM),
        (-1, -_CROSS_ARM), (-_CROSS_ARM, -_CROSS_ARM))],
    "star": [(r * x, r * y) for k, (x, y) in enumerate(_regular(10)) for r in ((1.0 if k % 2 == 0 else 0.45),)],
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float, fill) -> None:
    """Draw ``shape`` (circumradius ``radius`` px, rotated by ``angle`` rad) with no anti-aliasing."""
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=fill, width=max(1, round(radius * 0.3)))
    elif shape == "bar":
        c, s = math.cos(angle), math.sin(angle)
        w = max(0.8, radius * 0.18)
        pts = [(-radius, -w), (radius, -w), (radius, w), (-radius, w)]
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=fill)
    else:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in _POLYGONS[shape]], fill=fill)


def _background(rng: np.random.Generator, size: int, plain: bool = False) -> np.ndarray:
    """A muted, low-saturation texture: gradient, stripes or blotches (float, 0-255); flat if ``plain``."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-18, 18, size=3)
    if plain:
        return np.broadcast_to(base + tint, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        field_ = (np.cos(a) * xx + np.sin(a) * yy) * rng.uniform(30, 80)
    elif kind == 1:  # stripes
        a = rng.uniform(0, math.pi)
        freq = rng.uniform(2, 7)
        field_ = np.sin(2 * math.pi * freq * (np.cos(a) * xx + np.sin(a) * yy)) * rng.uniform(12, 30)
    else:  # blotches: a coarse random grid, upsampled
        cells = int(rng.integers(3, 7))
        coarse = rng.uniform(-30, 30, size=(cells, cells)).astype(np.float32)
        field_ = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BILINEAR))
    img = base + tint[None, None, :] + field_[..., None]
    return img


def _distractor_kind(rng: np.random.Generator, cfg: WorldConfig) -> tuple[str, tuple[int, int, int]]:
    """A (shape, rgb) pair that no caption names: caption colour -> non-caption shape, else a non-caption colour."""
    if rng.random() < cfg.vocab_colour_distractor_prob:
        colour = list(cfg.colours)[rng.integers(len(cfg.colours))]
        shape = DISTRACTOR_SHAPES[rng.integers(len(DISTRACTOR_SHAPES))]
        return shape, colour
    colour = list(DISTRACTOR_COLOURS)[rng.integers(len(DISTRACTOR_COLOURS))]
    shapes = (list(cfg.shapes) if cfg.vocab_shape_distractors else []) + list(DISTRACTOR_SHAPES)
    return shapes[rng.integers(len(shapes))], colour


def render_sample(rng: np.random.Generator, cfg: WorldConfig, label: Optional[int] = None) -> WorldSample:
    """Render one image (target class drawn from ``rng`` unless ``label`` is given)."""
    size = cfg.image_size
    n_classes = len(cfg.colours) * len(cfg.shapes)
    if label is None:
        label = int(rng.integers(n_classes))
    elif not 0 <= label < n_classes:
        raise WorldError(f"label {label} out of range [0, {n_classes})")
    colour = list(cfg.colours)[label // len(cfg.shapes)]
    shape = cfg.shapes[label % len(cfg.shapes)]

    canvas = Image.fromarray(np.clip(_background(rng, size, cfg.plain_background), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    # target placement first, so distractors can avoid covering most of it
    radius = rng.uniform(*cfg.target_size) * size / 2
    cx, cy = rng.uniform(radius, size - radius, size=2)
    if cfg.max_rotation >= 180:
        angle = rng.uniform(0, 2 * math.pi)
    else:
        angle = rng.uniform(-1, 1) * math.radians(cfg.max_rotation)
    distractors = []
    for _ in range(int(rng.integers(cfg.num_distractors[0], cfg.num_distractors[1] + 1))):
        d_shape, d_colour = _distractor_kind(rng, cfg)
        all_colours = {**cfg.colours, **DISTRACTOR_COLOURS}
        d_rgb = all_colours[d_colour]
        d_radius = rng.uniform(*cfg.distractor_size) * size / 2
        for _try in range(10):  # keep distractors mostly clear of the target
            dx, dy = rng.uniform(d_radius, size - d_radius, size=2)
            if math.hypot(dx - cx, dy - cy) > radius + 0.5 * d_radius:
                break
        _draw_shape(draw, d_shape, dx, dy, d_radius, rng.uniform(0, 2 * math.pi), d_rgb)
        distractors.append((d_colour, d_shape))
    rgb = np.clip(np.array(cfg.colours[colour]) + rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, size=3), 0, 255)
    mask_img = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask_img), shape, cx, cy, radius, angle, 255)
    mask = np.asarray(mask_img) > 0
    img = np.asarray(canvas).astype(np.float32)
    img[mask] = rgb
    img += rng.normal(0, cfg.noise_std, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return WorldSample(image=image, mask=mask, colour=colour, shape=shape, label=label,
                       caption=CAPTION_TEMPLATE.format(colour=colour, shape=shape), distractors=distractors)


def generate_arrays(num_images: int, seed: int, cfg: Optional[WorldConfig] = None,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """``num_images`` samples as arrays: images (N, H, W, 3) uint8, masks (N, H, W) bool, labels (N,) int64.

    Deterministic: the same (num_images, seed, cfg) gives identical arrays; image i depends only
    on (seed, i), so a longer set extends a shorter one.
    """
    cfg = cfg or WorldConfig()
    if num_images < 0:
        raise WorldError(f"num_images must be >= 0, got {num_images}")
    size = cfg.image_size
    images = np.empty((num_images, size, size, 3), np.uint8)
    masks = np.empty((num_images, size, size), bool)
    labels = np.empty(num_images, np.int64)
    it = range(num_images)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"rendering world (seed {seed})", unit="img")
    for i in it:
        s = render_sample(np.random.default_rng([seed, i]), cfg)
        images[i], masks[i], labels[i] = s.image, s.mask, s.label
    return {"images": images, "masks": masks, "labels": labels}


def sample_iter(num_images: int, seed: int, cfg: Optional[WorldConfig] = None):
    """Yield :class:`WorldSample` i = 0..num_images-1 (same samples as :func:`generate_arrays`)."""
    cfg = cfg or WorldConfig()
    for i in range(num_images):
        yield render_sample(np.random.default_rng([seed, i]), cfg)


def world_features(cfg: WorldConfig):
    """The ``datasets.Features`` of :func:`make_dataset`: image, mask (L-mode image, 0/255), caption, label."""
    from datasets import ClassLabel, Features, Value
    from datasets import Image as ImageFeature

    return Features({"image": ImageFeature(), "mask": ImageFeature(), "caption": Value("string"),
                     "label": ClassLabel(names=cfg.class_names)})


def make_dataset(num_images: int, seed: int = 0, cfg: Optional[WorldConfig] = None):
    """The world as a ``datasets.Dataset`` with columns image (RGB), mask (L, target pixels 255), caption, label.

    ``mask_array(row["mask"])`` gives the boolean mask back.
    """
    from datasets import Dataset

    cfg = cfg or WorldConfig()
    rows: dict[str, list] = {"image": [], "mask": [], "caption": [], "label": []}
    for s in sample_iter(num_images, seed, cfg):
        rows["image"].append(Image.fromarray(s.image, "RGB"))
        rows["mask"].append(Image.fromarray(s.mask.astype(np.uint8) * 255, "L"))
        rows["caption"].append(s.caption)
        rows["label"].append(s.label)
    return Dataset.from_dict(rows, features=world_features(cfg))


def mask_array(mask: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """A stored mask (L image 0/255, or an array) -> (H, W) bool."""
    return np.asarray(mask) > 0


def write_imagefolder(path: Union[str, Path], num_images: int, seed: int = 0, cfg: Optional[WorldConfig] = None) -> Path:
    """Write an imagefolder: ``images/*.png``, ``masks/*.png`` (L, 0/255) and ``metadata.jsonl``.

    Each metadata row has ``file_name``, ``mask_file_name``, ``caption``, ``label`` and
    ``class_name``, so ``load_dataset("imagefolder", data_dir=path)`` gives image and mask columns
    (see :func:`load_imagefolder`). ``world.json`` records the settings and seed.
    """
    from tqdm.auto import tqdm

    cfg = cfg or WorldConfig()
    path = Path(path)
    (path / "images").mkdir(parents=True, exist_ok=True)
    (path / "masks").mkdir(parents=True, exist_ok=True)
    names = cfg.class_names
    with open(path / "metadata.jsonl", "w") as meta:
        for i, s in enumerate(tqdm(sample_iter(num_images, seed, cfg), total=num_images, desc="writing world", unit="img")):
            Image.fromarray(s.image, "RGB").save(path / "images" / f"{i:06d}.png")
            Image.fromarray(s.mask.astype(np.uint8) * 255, "L").save(path / "masks" / f"{i:06d}.png")
            meta.write(json.dumps({"file_name": f"images/{i:06d}.png", "mask_file_name": f"masks/{i:06d}.png",
                                   "caption": s.caption, "label": s.label, "class_name": names[s.label]}) + "\n")
    (path / "world.json").write_text(json.dumps({"seed": seed, "num_images": num_images, "world": cfg.to_dict()}, indent=2))
    (path / "classnames.txt").write_text("\n".join(cfg.class_names) + "\n")  # label order, one per line
    return path


def imagefolder_world(path: Union[str, Path]) -> WorldConfig:
    """The :class:`WorldConfig` that ``world.json`` records in a folder written by :func:`write_imagefolder`."""
    info = Path(path) / "world.json"
    if not info.is_file():
        raise WorldError(f"{path} is not a world imagefolder (no world.json); write one with `aft-hf world sample`")
    try:
        return WorldConfig.from_dict(json.loads(info.read_text())["world"])
    except (KeyError, TypeError, ValueError) as e:
        raise WorldError(f"{info}: unreadable world settings ({e})") from None


def load_imagefolder(path: Union[str, Path]):
    """Load a folder written by :func:`write_imagefolder` as a ``datasets.Dataset`` (label as ClassLabel)."""
    from datasets import load_dataset

    path = Path(path)
    cfg = imagefolder_world(path)
    ds = load_dataset("imagefolder", data_dir=str(path), split="train")
    extra = [c for c in ds.column_names if c not in ("image", "mask", "caption", "label")]
    return ds.remove_columns(extra).cast(world_features(cfg))
