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


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between maps, per image (B,)."""
    ra = a.detach().float().flatten(1).argsort(1).argsort(1).float()
    rb = b.detach().float().flatten(1).argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


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
    """``explain_fn(model) -> maps``; returns the mean and per-image Spearman correlation trained vs random."""
    original = explain_fn(encoder)
    randomized = explain_fn(randomized_copy(encoder, seed))
    rho = spearman(original, randomized)
    return {"spearman_mean": rho.mean().item(), "spearman": rho.tolist()}
