"""Localisation of attribution maps against object masks or boxes.

Both metrics read the raw map (see :mod:`aft_hf.evaluate.base`), never the display-clipped one.

- Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop"): a hit
  when the map's maximum falls on the object, or within ``tolerance`` pixels of it (the paper
  uses 15 px). Tied maxima: the image scores the *share* of its maximal pixels that hit, so no
  pixel order (an argmax picks the first in raster order) can decide the outcome.
- Energy-in-mask, the energy-based pointing game (Wang et al. 2020, "Score-CAM"): the share of
  the map's positive mass inside the object; a map spread uniformly scores the mask's area
  fraction, reported as the chance level.

An empty mask (no object pixel, e.g. a box outside the crop) says nothing about localisation: every
metric here returns NaN for it, the means skip it and reports count it (``n_empty_masks``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_masks(masks: Tensor, like: Tensor) -> Tensor:
    from .base import EvaluationError

    m = masks.float()
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.shape[0] != like.shape[0] or m.shape[-2:] != like.shape[-2:]:
        raise EvaluationError(f"masks {tuple(masks.shape)} do not match maps {tuple(like.shape)}: give one mask "
                              "per image, resized and cropped like its image")
    return (m > 0).float()


def empty_masks(masks: Tensor) -> Tensor:
    """(B,) bool: masks without a single object pixel (skipped by every localisation metric)."""
    m = masks.float()
    return (m > 0).flatten(1).sum(1) == 0


def boxes_to_masks(boxes: Sequence[Sequence[float]], height: int, width: int) -> Tensor:
    """Boxes [x0, y0, x1, y1] in pixels (one per image) -> masks (B, 1, H, W); corners round to the nearest pixel.

    The one place boxes become masks: evaluation data draws its (validated, converted) boxes with it too."""
    masks = torch.zeros(len(boxes), 1, height, width)
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (max(int(round(v)), 0) for v in box)
        masks[i, 0, y0:y1, x0:x1] = 1
    return masks


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Per image: the share of its maximal pixels inside the mask (1.0 hit, 0.0 miss; NaN for an empty mask).

    With a single maximum this is the classic hit/miss. ``tolerance`` dilates the mask by that many
    pixels (a square neighbourhood). Feed raw maps: display clipping turns the top 1% into ties.
    """
    m = _as_masks(masks, maps)
    empty = m.flatten(1).sum(1) == 0
    if tolerance > 0:
        m = F.max_pool2d(m, 2 * tolerance + 1, stride=1, padding=tolerance)
    flat = maps.detach().float().flatten(1)
    peaks = (flat == flat.max(dim=1, keepdim=True).values).float()
    hits = (peaks * m.flatten(1)).sum(1) / peaks.sum(1)
    return torch.where(empty, torch.full_like(hits, float("nan")), hits)


def energy_in_mask(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(share of the map's positive mass inside the mask, chance = mask area fraction), each (B,).

    Both are NaN for an empty mask (as in :func:`pointing_game`); the share is NaN for a map without
    positive mass.
    """
    m = _as_masks(masks, maps)
    a = maps.detach().float().clamp_min(0)
    total = a.flatten(1).sum(1)
    inside = (a * m).flatten(1).sum(1)
    nan = torch.full_like(total, float("nan"))
    empty = m.flatten(1).sum(1) == 0
    share = torch.where((total > 0) & ~empty, inside / total.clamp_min(1e-12), nan)
    return share, torch.where(empty, nan, m.flatten(1).mean(1))
