"""Labelled evaluation images from ``datasets``: a Hub id, ``imagefolder`` + data dir, a local folder.

Images are decoded by aft_hf with the same defensive decoder as training (a header check of the
size, EXIF orientation applied, first frame of an animation; any unreadable file is skipped and
counted), resized (shortest edge, bicubic) and centre-cropped to the model's size, kept in [0, 1].
Optional object masks (an image column) or boxes ([x0, y0, x1, y1] in pixels of the upright image,
as displayed) get the same resize and crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..config import DataConfig
from ..data.errors import DataError
from ..data.images import open_image, resize_center_crop, to_rgb, to_tensor
from ..data.quality import BadSamples
from ..data.sources import load_source

logger = logging.getLogger(__name__)
SPLIT_PREFERENCE = ("validation", "test", "train")


@dataclass
class LabelledImages:
    images: Tensor
    labels: Tensor
    label_feature: Any
    masks: Optional[Tensor]
    split: str
    skipped: int


def _mask_tensor(mask_image: Image.Image, size: int) -> Tensor:
    """A mask image -> (1, size, size) {0, 1}, resized and cropped like the image (nearest)."""
    w, h = mask_image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    m = mask_image.convert("L").resize((new_w, new_h), Image.Resampling.NEAREST)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    m = m.crop((left, top, left + size, top + size))
    return torch.from_numpy((np.asarray(m) > 0).astype(np.float32)).unsqueeze(0)


def _box_mask(box, image_size: tuple[int, int], size: int) -> Tensor:
    w, h = image_size
    canvas = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    canvas[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 255
    return _mask_tensor(Image.fromarray(canvas), size)


def load_labelled_images(dataset: str, size: int, split: Optional[str] = None, data_dir: Optional[str] = None,
                         config_name: Optional[str] = None, image_column: str = "image", label_column: str = "label",
                         max_samples: Optional[int] = None, streaming: bool = False, seed: int = 0,
                         mask_column: Optional[str] = None, box_column: Optional[str] = None,
                         token: Optional[str] = None, progress: bool = True,
                         max_bad_fraction: float = 0.1) -> LabelledImages:
    """Decode up to ``max_samples`` labelled images (shuffled with ``seed`` unless streaming).

    Unreadable images (or masks) are skipped and counted; more than ``max_bad_fraction`` of them
    among the images read is a :class:`DataError`.
    """
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
    if not streaming:
        ds = ds.shuffle(seed=seed)
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
    elif max_samples is not None:
        ds = ds.take(max_samples)
    images, labels, masks = [], [], []
    bad = BadSamples(max_bad_fraction, f"'{dataset}'")
    total = max_samples if streaming else len(ds)
    for example in tqdm(ds, desc="decoding", total=total, disable=not progress, leave=False):
        value = example[image_column]
        try:
            raw = open_image(value)
            image = to_tensor(resize_center_crop(to_rgb(raw), size))
            mask = (_mask_tensor(open_image(example[mask_column]), size) if mask_column else
                    _box_mask(example[box_column], raw.size, size) if box_column else None)
        except Exception as e:  # any decoder failure, of the image or of its mask: skip the sample
            bad.bad(value.get("path") if isinstance(value, dict) else None, e)
            continue
        bad.good()
        images.append(image)
        labels.append(int(example[label_column]))
        if mask is not None:
            masks.append(mask)
    if not images:
        raise DataError(f"no readable images in dataset '{dataset}' split '{split}' ({bad.summary()})")
    if bad.skipped:
        logger.warning("dataset '%s': %s, skipped", dataset, bad.summary())
    return LabelledImages(torch.stack(images), torch.tensor(labels), features.get(label_column),
                          torch.stack(masks) if masks else None, split or "", bad.skipped)
