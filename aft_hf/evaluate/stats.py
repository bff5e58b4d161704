"""Summary statistics shared by the metrics and the demo report."""

from __future__ import annotations

import torch
from torch import Tensor


def nanmean(x: Tensor) -> float:
    """Mean of the non-NaN entries (NaN marks an undefined per-image value, e.g. an empty mask); NaN if none."""
    x = x[~torch.isnan(x)]
    return x.mean().item() if x.numel() else float("nan")
