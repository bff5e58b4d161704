"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

The weights of the explained encoder are re-drawn at random and the maps recomputed. A method
that explains the *model* must change: the Spearman rank correlation between the maps of the
trained and the randomised model should be low. A method that only detects edges in the input
keeps a high correlation.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from .stats import nanmean


def average_ranks(x: Tensor) -> Tensor:
    """Ranks (1 .. n) of each row of ``x`` (B, n), tied values sharing the mean of their positions (as
    ``scipy.stats.rankdata``): a map with many equal pixels (Grad-CAM's zeros after its ReLU) gets no rank
    order from the pixels' positions."""
    values, order = x.sort(dim=1, stable=True)
    b, n = values.shape
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(1) - 1 + n * torch.arange(b, device=x.device).unsqueeze(1)  # distinct per row
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand(b, n).reshape(-1)
    total = torch.zeros(b * n, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1), positions)
    count = torch.zeros(b * n, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1),
                                                                                 torch.ones_like(positions))
    mean_rank = (total / count.clamp_min(1))[group]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between maps, per image (B,), with average ranks for ties (as
    ``scipy.stats.spearmanr`` and Quantus). NaN where a map is constant: its correlation is undefined
    (:func:`randomisation_check` leaves those images out of the mean and counts them)."""
    ra = average_ranks(a.detach().flatten(1).cpu().double())  # float64 on the CPU: MPS has none
    rb = average_ranks(b.detach().flatten(1).cpu().double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    scale = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(1) / scale.clamp_min(1e-300)
    return torch.where(scale > 0, rho.clamp(-1, 1), torch.full_like(rho, float("nan"))).float()


def randomized_copy(encoder: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """A deep copy whose linear/conv/embedding weights are re-drawn N(0, std^2) and biases zeroed.

    Layer norms are kept, so activations stay in range and the maps remain computable.
    """
    model = copy.deepcopy(encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, nn.LayerNorm):
                    continue
                if name == "bias":
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def randomisation_check(encoder: nn.Module, explain_fn: Callable[[nn.Module], Tensor], seed: int = 0) -> dict:
    """``explain_fn(model) -> maps``; returns the per-image Spearman correlation trained vs random
    (``spearman``, NaN where a map is constant), their mean over the images where it is defined
    (``spearman_mean``, NaN if none) and how many were left out (``undefined``)."""
    original = explain_fn(encoder)
    randomized = explain_fn(randomized_copy(encoder, seed))
    rho = spearman(original, randomized)
    return {"spearman_mean": nanmean(rho), "spearman": rho.tolist(), "undefined": int(torch.isnan(rho).sum())}
