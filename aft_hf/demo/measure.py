"""Per-image measurements of one encoder on the held-out world images, and paired statistics.

Every number comes from the package's own metrics (``aft_hf.evaluate``): energy-in-mask (with its
chance level, the mask's area fraction), pointing game exact and with a tolerance, Gini
sparseness, deletion AUC on the zero-shot probability of the true class (divided by the model's
clean probability, with a random ranking as the baseline), and zero-shot accuracy clean and under
L-inf APGD (or the package's PGD). The metrics read the raw maps; the returned ``maps`` are the
display versions (99th-percentile clip, min-max) for the figures only.

``aft_objective`` measures what AFT optimises, on held-out images: the embedding distance that the
training attack reaches against the frozen original's clean embeddings (lower: the recipe trained).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..attack import PGDAttacker, embedding_distance
from ..config import AttackConfig
from ..evaluate import (
    EvalContext, energy_in_mask, gini, normalised_auc, perturbation_curve, pointing_game, predict, robust_accuracy,
)

# metric -> True when a larger value is the better (or, for Gini, the sparser) map
METRIC_DIRECTION = {"energy": True, "pointing": True, "pointing_tol": True, "gini": True, "deletion_auc": False}


@dataclass
class EvalSet:
    """Held-out images (N, 3, H, W) in [0, 1], masks (N, 1, H, W), labels (N,), class embeddings (C, D)."""

    images: Tensor
    masks: Tensor
    labels: Tensor
    class_weights: Tensor
    logit_scale: float


def measure(encoder: torch.nn.Module, data: EvalSet, methods: Sequence[str], tolerance: int,
            robust_eps: Sequence[float], robust_steps: int, deletion_steps: int = 20, batch_size: int = 32,
            seed: int = 0, progress: bool = True, robust_attack: str = "apgd", robust_targets: int = 9) -> dict:
    """{"per_image": {method: {metric: (N,)}}, "maps": {method: display maps (N,1,H,W)}, "chance": (N,),
    "accuracy": {...}, "clean_probability": float, "deletion_random_auc": float}.

    Metrics read the raw maps; ``deletion_auc`` per image is divided by the model's mean clean
    probability, like ``deletion_random_auc`` (the same images ranked at random). Robust accuracy:
    L-inf ``robust_attack`` (``apgd``: APGD-CE then APGD-T on ``robust_targets`` classes) with
    ``robust_steps`` iterations at each budget of ``robust_eps`` (1/255 units).
    """
    encoder.eval()
    ctx = EvalContext(encoder, data.class_weights, data.images, data.labels, list(methods), data.logit_scale,
                      data.masks, batch_size, seed, progress)
    clean = ctx.label_probability(data.images, data.labels)

    def deletion(maps: Tensor) -> Tensor:
        fractions, curves = perturbation_curve(ctx.label_probability, data.images, maps, data.labels, "deletion",
                                               deletion_steps, batch_size=batch_size, seed=seed, progress=False)
        return normalised_auc(fractions, curves, clean)

    per_image, maps, chance = {}, {}, None
    for method in methods:
        m = ctx.maps(method)
        share, chance = energy_in_mask(m, data.masks)
        per_image[method] = {
            "energy": share, "pointing": pointing_game(m, data.masks, 0),
            "pointing_tol": pointing_game(m, data.masks, tolerance), "gini": gini(m), "deletion_auc": deletion(m),
        }
        maps[method] = ctx.display_maps(method)
    generator = torch.Generator().manual_seed(seed)
    random_auc = deletion(torch.rand(data.images.shape[0], 1, *data.images.shape[-2:], generator=generator))
    logits = predict(ctx.classifier, data.images, batch_size, progress=False)
    accuracy = {"clean": (logits.argmax(1) == data.labels).float().mean().item(),
                "robust": robust_accuracy(ctx.classifier, data.images, data.labels, robust_eps, robust_steps,
                                          batch_size=batch_size, seed=seed, progress=progress,
                                          attack=robust_attack, targets=robust_targets)}
    return {"per_image": per_image, "maps": maps, "chance": chance, "accuracy": accuracy,
            "clean_probability": clean.mean().item(), "deletion_random_auc": random_auc.mean().item()}


def aft_objective(encoder: torch.nn.Module, original: torch.nn.Module, images: Tensor, attack: AttackConfig,
                  batch_size: int = 32, seed: int = 0) -> dict:
    """Per-image AFT loss on held-out images: {"adversarial": (N,), "clean": (N,)}.

    ``adversarial``: ||f(x + delta) - f0(x)||^2 where delta is the package's PGD attack with the
    training attack's settings (``attack``, whatever its ``mode``: a noise control is measured against
    the same attack) maximising that distance, and f0 the frozen ``original`` on clean images.
    ``clean``: ||f(x) - f0(x)||^2, what the fine-tune gave up. The attack's random start and noise
    come from ``seed``, so models measured with the same seed face the same randomness.
    """
    attacker = PGDAttacker.from_config(attack, patch_size=getattr(encoder, "patch_size", None))
    generator = torch.Generator().manual_seed(seed)
    encoder.eval()
    original.eval()
    adversarial, clean = [], []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        with torch.no_grad():
            targets = original(x)
            clean.append(embedding_distance(encoder(x), targets))
        adv = attacker(encoder, x, lambda e: embedding_distance(e, targets), generator)
        with torch.no_grad():
            adversarial.append(embedding_distance(encoder(adv), targets))
    return {"adversarial": torch.cat(adversarial), "clean": torch.cat(clean)}


def paired(new: Tensor, old: Tensor, higher_is_better: bool = True) -> dict:
    """Per-image paired difference new - old: mean, standard error, share of images that improved."""
    d = (new - old).float()
    d = d[~torch.isnan(d)]
    n = d.numel()
    if n == 0:
        return {"mean": float("nan"), "se": float("nan"), "improved": float("nan"), "n": 0}
    se = d.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    better = (d > 0) if higher_is_better else (d < 0)
    return {"mean": d.mean().item(), "se": se, "improved": better.float().mean().item(), "n": n}


def spread(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation over seeds (sd ``None`` for one seed: there is no spread to show)."""
    v = [x for x in values if x == x]
    if not v:
        return {"mean": float("nan"), "sd": float("nan"), "per_seed": list(values)}
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return {"mean": mean, "sd": sd, "per_seed": list(values)}
