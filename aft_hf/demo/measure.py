"""Per-image measurements of one encoder on the held-out world images, and paired statistics.

Every number comes from the package's registered metrics (``aft_hf.evaluate.metrics``, run through
:func:`aft_hf.evaluate.runner.run_metrics`, read from their results' per-image values and flat
data): energy-in-mask (with its chance level, the mask's area fraction), pointing game exact and
with a tolerance, Gini sparseness, deletion AUC on the zero-shot probability of the true class
(divided by the model's clean probability, with a random ranking as the baseline), and zero-shot
accuracy clean and under L-inf APGD (or the package's PGD). The metrics read the raw maps; the returned ``maps`` are the
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
from ..evaluate import EvalContext
from ..evaluate.runner import run_metrics

# the demo's per-image metric -> (registered metric, its per-image value)
PER_IMAGE = {"energy": ("energy", "energy"), "pointing": ("pointing", "exact"),
             "pointing_tol": ("pointing", "tolerance_{tolerance}px"), "gini": ("gini", "gini"),
             "deletion_auc": ("deletion", "auc")}
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
    "accuracy": {...}, "clean_probability": float, "deletion_random_auc": float, "results": {metric:
    MetricResult}} (``results``: what the Hub card of the model reads, in memory only).

    Metrics read the raw maps; ``deletion_auc`` per image is divided by the model's mean clean
    probability, like ``deletion_random_auc`` (the same images ranked at random). Robust accuracy:
    L-inf ``robust_attack`` (``apgd``: APGD-CE then APGD-T on ``robust_targets`` classes) with
    ``robust_steps`` iterations at each budget of ``robust_eps`` (1/255 units).
    """
    encoder.eval()
    ctx = EvalContext(encoder, data.class_weights, data.images, data.labels, list(methods), data.logit_scale,
                      data.masks, batch_size, seed, progress)
    options = {"energy": {}, "pointing": {"tolerance": tolerance}, "gini": {}, "deletion": {"steps": deletion_steps},
               "zeroshot": {}, "robust": {"eps": tuple(robust_eps), "steps": robust_steps, "attack": robust_attack,
                                          "targets": robust_targets}}
    r = run_metrics(ctx, list(options), options)
    per_image = {method: {name: r[metric].per_image[method][value.format(tolerance=tolerance)]
                          for name, (metric, value) in PER_IMAGE.items()} for method in methods}
    deletion = r["deletion"].data["deletion"]
    return {"per_image": per_image, "maps": {method: ctx.display_maps(method) for method in methods},
            "chance": r["energy"].per_image[methods[-1]]["chance"] if methods else None,
            "accuracy": {"clean": r["zeroshot"].per_image[""]["correct"].mean().item(),
                         "robust": r["robust"].data["robust_top1"]},
            "clean_probability": deletion["clean_probability"],
            "deletion_random_auc": deletion["methods"]["random"]["auc"], "results": r}


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
