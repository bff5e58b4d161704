"""Localisation of attribution maps against object masks or boxes.

- Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop"): a hit
  when the map's maximum falls on the object, or within ``tolerance`` pixels of it (the paper
  uses 15 px).
- Energy-in-mask, the energy-based pointing game (Wang et al. 2020, "Score-CAM"): the share of
  the map's mass inside the object; a map spread uniformly scores the mask's area fraction,
  reported as the chance level.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_masks(masks: Tensor, like: Tensor) -> Tensor:
    m = masks.float()
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.shape[0] != like.shape[0] or m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match maps {tuple(like.shape)}")
    return (m > 0).float()


def boxes_to_masks(boxes: Sequence[Sequence[float]], height: int, width: int) -> Tensor:
    """Boxes [x0, y0, x1, y1] in pixels (one per image) -> masks (B, 1, H, W)."""
    masks = torch.zeros(len(boxes), 1, height, width)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, 0, max(int(y0), 0):max(int(round(y1)), 0), max(int(x0), 0):max(int(round(x1)), 0)] = 1
    return masks


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Per image 1.0 (hit), 0.0 (miss) or NaN (empty mask); ``tolerance`` dilates the mask by that many pixels."""
    m = _as_masks(masks, maps)
    if tolerance > 0:
        m = F.max_pool2d(m, 2 * tolerance + 1, stride=1, padding=tolerance)
    flat = maps.detach().float().flatten(1)
    peak = flat.argmax(dim=1)
    hits = m.flatten(1).gather(1, peak.view(-1, 1)).squeeze(1)
    return torch.where(m.flatten(1).sum(1) > 0, hits, torch.full_like(hits, float("nan")))


def energy_in_mask(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """(share of map mass inside the mask, chance level = mask area fraction), each (B,)."""
    m = _as_masks(masks, maps)
    a = maps.detach().float().clamp_min(0)
    total = a.flatten(1).sum(1)
    inside = (a * m).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))
    return share, m.flatten(1).mean(1)
