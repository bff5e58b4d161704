"""Labelled evaluation images from ``datasets``: a Hub id, ``imagefolder`` + data dir, a local folder.

Images are decoded by aft_hf with the same defensive decoder as training (a header check of the
size, EXIF orientation applied, first frame of an animation; any unreadable file is skipped and
counted), resized (shortest edge, bicubic) and centre-cropped to the model's size, kept in [0, 1].
Optional object masks (an image column) or boxes ([x0, y0, x1, y1] in pixels of the upright image,
as displayed, by default; see :mod:`aft_hf.evaluate.boxes` for the other conventions) get the same resize and crop
(any resolution with the image's aspect ratio; a list of boxes is their union). Malformed labels, masks
or boxes raise :class:`EvaluationError` naming the column.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..config import DataConfig
from ..data.errors import DataError
from ..data.images import DECODE_ERRORS, ImageGeometry, ImageModeError, open_image, to_rgb, to_tensor
from ..data.quality import BadSamples
from ..data.sources import load_source
from .base import EvaluationError
from .boxes import box_layout, pixel_corners
from .localisation import boxes_to_masks

logger = logging.getLogger(__name__)
SPLIT_PREFERENCE = ("validation", "test", "train")
NAME_COLUMN = "class_name"
"""The column that names integer labels in an imagefolder's ``metadata.jsonl`` (as ``aft-hf world sample`` writes)."""


@dataclass
class LabelledImages:
    images: Tensor
    labels: Tensor
    label_feature: Any
    masks: Optional[Tensor]
    split: str
    skipped: int
    sources: list[str] = field(default_factory=list)  # per image: its file name, else "row N" of the split
    named_labels: bool = False
    """The label column held class names (``"red circle"``): ``labels`` index ``label_feature``'s names, the
    distinct names found, sorted, until :meth:`for_class_names` maps them onto the run's class names."""
    names_column: Optional[str] = None
    """The column whose names ``label_feature`` holds (:data:`NAME_COLUMN`), when the label column had none."""

    def for_class_names(self, class_names: Sequence[str]) -> "LabelledImages":
        """These images with labels that index ``class_names`` (labels given as names are looked up there; a
        name not in the list is an :class:`EvaluationError`); integer labels are returned as they are."""
        if not self.named_labels or list(class_names) == list(self.label_feature.names):
            return self
        from .zeroshot import label_indices

        values = [self.label_feature.names[i] for i in self.labels.tolist()]
        labels, _ = label_indices(values, class_names)
        return dataclasses.replace(self, labels=labels, named_labels=False)  # mapped once


def _mask_tensor(mask_image: Image.Image, image_size: tuple[int, int], size: "int | ImageGeometry",
                 column: str = "mask", where: str = "") -> Tensor:
    """A mask image -> (1, size, size) {0, 1}, through the very resize and centre crop of its image.

    The mask is first brought to its image's pixel size (nearest), so a mask stored at another
    resolution still lines up; one of another aspect ratio cannot, and is an error.
    """
    w, h = image_size
    mw, mh = mask_image.size
    if abs(mw * h - mh * w) > 0.01 * max(mw * h, mh * w):
        raise EvaluationError(f"--mask-column '{column}': a {mw}x{mh} mask{where} cannot line up with its {w}x{h} image "
                              "(other aspect ratio); masks must cover their image (any resolution, same shape)")
    binary = (np.asarray(mask_image.convert("L")) > 0).astype(np.uint8) * 255
    m = Image.fromarray(binary).resize((w, h), Image.Resampling.NEAREST)
    m = ImageGeometry.of(size)(m)  # the image's own geometry (its filter on a 0/255 mask, thresholded below)
    return torch.from_numpy((np.asarray(m) >= 128).astype(np.float32)).unsqueeze(0)


def _boxes(value: Any, column: str, fmt: str = "xyxy") -> list[list[float]]:
    """One box or a list of them (their union is the object) -> list of 4-number boxes."""
    def fail() -> EvaluationError:
        return EvaluationError(f"--box-column '{column}' must hold a box {box_layout(fmt)} (--box-format {fmt}) "
                               f"(or a list of such boxes), got {value!r:.80}")

    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise fail()
    items = list(value)
    boxes = items if items and all(hasattr(b, "__len__") and not isinstance(b, (str, bytes)) for b in items) else [items]
    try:
        out = [[float(v) for v in b] for b in boxes]
    except (TypeError, ValueError):
        raise fail() from None
    if any(len(b) != 4 for b in out):
        raise fail()
    return out


def _where(mask_value: Any, image_value: Any) -> str:
    """' (mask.png, image image.png)' from datasets' undecoded image dicts, for error messages; '' when unknown."""
    def path(v: Any) -> Optional[str]:
        return v.get("path") if isinstance(v, dict) else v if isinstance(v, str) else None

    mask, image = path(mask_value), path(image_value)
    return f" ({mask}, image {image})" if mask and image else f" ({mask or image})" if mask or image else ""


def _box_mask(value: Any, image_size: tuple[int, int], size: "int | ImageGeometry", column: str = "box", fmt: str = "xyxy",
              units: str = "pixels", where: str = "") -> Tensor:
    """The union of the boxes in ``value`` (declared ``fmt`` and ``units``, each validated) as a mask."""
    w, h = image_size
    corners = [pixel_corners(box, image_size, fmt, units, column, where) for box in _boxes(value, column, fmt)]
    union = boxes_to_masks(corners, h, w).amax(0)[0] if corners else torch.zeros(h, w)
    return _mask_tensor(Image.fromarray((union.numpy() * 255).astype(np.uint8)), image_size, size, column)


def _label(value: Any, column: str) -> "int | str":
    """A class index, or a class name (a non-empty string that is not a number)."""
    if isinstance(value, str) and value.strip() and not value.strip().lstrip("-").isdigit():
        return value.strip()
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"--label-column '{column}' must hold class indices, class names or a ClassLabel, got "
                              f"{value!r:.80}; pick the label column with --label-column") from None


def _label_tensor(labels: list, feature: Any, column: str) -> tuple[Tensor, Any, bool]:
    """(labels as indices, the label feature, whether they were names): names index their sorted distinct set,
    which becomes the feature's ClassLabel (as training does with eval.class_names null)."""
    named = [v for v in labels if isinstance(v, str)]
    if not named:
        return torch.tensor(labels, dtype=torch.long), feature, False
    if len(named) != len(labels):
        raise EvaluationError(f"--label-column '{column}' mixes class names and class indices: give one or the other")
    import datasets

    found = sorted(set(named))
    index = {name: i for i, name in enumerate(found)}
    return torch.tensor([index[v] for v in labels], dtype=torch.long), datasets.ClassLabel(names=found), True


def names_from_column(ds: Any, label_column: str, features: Any = None) -> Any:
    """A ``ClassLabel`` for integer labels without names, from the split's :data:`NAME_COLUMN` (read whole, no image
    decoded, so a ``--max-samples`` subset keeps every class the split names); None when there is no such column or
    it cannot name each class 0..max once (a label with two names is warned about; a class without images, as in a
    small world sample whose world.json names them all, is not). A row without a label is an error."""
    import datasets

    features = features if features is not None else ds.features
    if (label_column == NAME_COLUMN or NAME_COLUMN not in features or label_column not in features
            or isinstance(features.get(label_column), datasets.ClassLabel) or not isinstance(ds, datasets.Dataset)):
        return None
    names: dict[int, str] = {}
    for row, (label, name) in enumerate(zip(ds[label_column], ds[NAME_COLUMN])):
        if label is None:
            raise EvaluationError(f"row {row} of the split has no '{label_column}' (it is null or missing there): give "
                                  "every image a label")
        if isinstance(label, str) or not isinstance(name, str) or not name.strip():
            return None  # labels that are names already, or rows without a name
        if names.setdefault(int(label), name) != name:
            logger.warning("column '%s' gives label %d two names ('%s', '%s'): not used as class names",
                           NAME_COLUMN, int(label), names[int(label)], name)
            return None
    if sorted(names) != list(range(len(names))):  # a class without images (a world sample's): names unknown
        return None
    return datasets.ClassLabel(names=[names[i] for i in range(len(names))])


def _open_mask(value: Any, column: str) -> Image.Image:
    try:
        return open_image(value)
    except (*DECODE_ERRORS, ImageModeError, OSError, ValueError) as e:
        path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
        what = f"'{path}'" if path else f"{value!r:.80}"
        why = "no such file" if isinstance(e, FileNotFoundError) else type(e).__name__
        raise EvaluationError(f"--mask-column '{column}' must hold mask images (or paths to them); could not read "
                              f"{what} as an image ({why})") from None


def _source_name(value, row: int) -> str:
    """What names an image for a person looking for it: its file name when the dataset keeps one, else its row
    in the split (the order ``load_dataset`` gives)."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return Path(path).name if path else f"row {row}"


def load_labelled_images(dataset: str, size: "int | ImageGeometry", split: Optional[str] = None, data_dir: Optional[str] = None,
                         config_name: Optional[str] = None, image_column: str = "image", label_column: str = "label",
                         max_samples: Optional[int] = None, streaming: bool = False, seed: int = 0,
                         mask_column: Optional[str] = None, box_column: Optional[str] = None,
                         token: Optional[str] = None, progress: bool = True,
                         max_bad_fraction: float = 0.1, box_format: str = "xyxy",
                         box_units: str = "pixels") -> LabelledImages:
    """Decode up to ``max_samples`` labelled images (shuffled with ``seed`` unless streaming).

    ``size``: the model's :class:`~aft_hf.data.images.ImageGeometry` (its own processor's resize and crop),
    or a side for CLIP's resize of the shortest edge + centre crop; masks and boxes follow their image.

    Boxes are read as ``box_format`` (``xyxy`` corners or ``xywh``) in ``box_units`` (``pixels`` of the
    upright image or ``normalised`` to [0, 1]); a box that cannot be valid so is an :class:`EvaluationError`.

    Unreadable images (or masks) are skipped and counted; more than ``max_bad_fraction`` of them
    among the images read is a :class:`DataError`.
    """
    geometry = ImageGeometry.of(size)
    cfg = DataConfig(dataset=dataset, data_dir=data_dir, config_name=config_name, split=split,
                     streaming=streaming, image_column=image_column)
    import datasets

    ds = load_source(cfg, token)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        available = list(ds.keys())
        split = next((s for s in SPLIT_PREFERENCE if s in available), available[0])
        ds = ds[split]
    features = ds.features or {}
    for col, what in ((image_column, "--image-column"), (label_column, "--label-column"),
                      (mask_column, "--mask-column"), (box_column, "--box-column")):
        if col and features and col not in features:
            raise DataError(f"dataset '{dataset}' has no column '{col}' (columns: {', '.join(features)}); set {what}")
    for col in (image_column, mask_column):
        if col and isinstance(features.get(col), datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    named_by = None if streaming else names_from_column(ds, label_column, features)
    if not streaming:  # the rows ds.shuffle(seed=seed) would give, kept so each image can be named by its row
        rows = np.random.default_rng(seed).permutation(len(ds))
        rows = rows[:max_samples] if max_samples is not None else rows
        ds = ds.select(rows)
    else:
        rows = range(max_samples) if max_samples is not None else itertools.count()
        if max_samples is not None:
            ds = ds.take(max_samples)
    images, labels, masks, sources = [], [], [], []
    bad = BadSamples(max_bad_fraction, f"'{dataset}'")
    total = max_samples if streaming else len(ds)
    for row, example in zip(rows, tqdm(ds, desc="decoding", total=total, disable=not progress, leave=False)):
        value = example[image_column]
        try:
            raw = open_image(value)
            image = to_tensor(geometry(to_rgb(raw)))
        except Exception as e:  # any decoder failure: skip the sample (a malformed label/mask column is an error)
            bad.bad(value.get("path") if isinstance(value, dict) else None, e)
            continue
        bad.good()
        images.append(image)
        sources.append(_source_name(value, int(row)))
        labels.append(_label(example[label_column], label_column))
        if mask_column:
            masks.append(_mask_tensor(_open_mask(example[mask_column], mask_column), raw.size, geometry, mask_column,
                                      _where(example[mask_column], value)))
        elif box_column:
            masks.append(_box_mask(example[box_column], raw.size, geometry, box_column, box_format, box_units,
                                   _where(None, value)))
    bad.check()  # the share over every image read, also when the bad ones came first
    if not images:
        raise DataError(f"no readable images in dataset '{dataset}' split '{split}' ({bad.summary()})")
    if bad.skipped:
        logger.warning("dataset '%s': %s, skipped", dataset, bad.summary())
    label_tensor, feature, named = _label_tensor(labels, named_by or features.get(label_column), label_column)
    return LabelledImages(torch.stack(images), label_tensor, feature, torch.stack(masks) if masks else None,
                          split or "", bad.skipped, sources, named, NAME_COLUMN if named_by and not named else None)
