"""Zero-shot classification accuracy, clean and under the package's own L-inf PGD.

Logits are ``logit_scale * cos(f(x), w_c)`` with w_c the L2-normalised class embeddings
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").
Robust accuracy follows the robust-CLIP protocol (Schlarmann et al. 2024, FARE; Mao et al. 2023,
TeCoA): PGD on the cross-entropy of the zero-shot logits, eps in {1, 2, 4}/255.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attack import PGDAttacker


class ZeroShotClassifier(nn.Module):
    """pixels in [0, 1] -> zero-shot logits (B, C); a module, so the attacker can freeze it."""

    def __init__(self, encoder: nn.Module, class_weights: Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("class_weights", F.normalize(class_weights.detach().float(), dim=-1), persistent=False)
        self.logit_scale = float(logit_scale)

    def forward(self, images: Tensor) -> Tensor:
        embeds = F.normalize(self.encoder(images).float(), dim=-1)
        return self.logit_scale * embeds @ self.class_weights.to(embeds.device).T


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not progress or len(starts) <= 1, leave=False)


@torch.no_grad()
def predict(classifier: ZeroShotClassifier, images: Tensor, batch_size: int = 64, progress: bool = True) -> Tensor:
    """Zero-shot logits (N, C) for images (N, 3, H, W) in [0, 1]."""
    classifier.eval()
    device = classifier.class_weights.device
    return torch.cat([classifier(images[s:s + batch_size].to(device)).cpu()
                      for s in _batches(len(images), batch_size, "zero-shot", progress)])


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: fraction of labels among the k highest logits (k capped at the class count)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hits = (logits.topk(kk, dim=1).indices == labels.view(-1, 1)).any(dim=1)
        out[f"top{k}"] = hits.float().mean().item() if len(labels) else float("nan")
    return out


def robust_accuracy(classifier: ZeroShotClassifier, images: Tensor, labels: Tensor,
                    eps: Sequence[float] = (1, 2, 4), steps: int = 10, alpha: Optional[float] = None,
                    batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Top-1 accuracy under L-inf PGD for each budget in ``eps`` (1/255 units); keys like ``"4/255"``.

    An image counts as robust at budget e when it is classified correctly clean and at the PGD
    points of every budget <= e (all lie inside the e-ball, and the adversary may pick any of them),
    so the numbers never exceed the clean accuracy and never rise with e. PGD: ``steps`` iterations,
    step ``alpha`` (default 2.5 * eps / steps), momentum 0.9, random start, no noise.
    """
    budgets = sorted(float(e) for e in eps)
    if any(e < 0 for e in budgets):
        raise ValueError(f"eps must be >= 0, got {list(eps)}")
    device = classifier.class_weights.device
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = {e: 0 for e in budgets}
    for s in _batches(len(images), batch_size, "robust", progress):
        x, y = images[s:s + batch_size].to(device), labels[s:s + batch_size].to(device)
        with torch.no_grad():
            alive = classifier(x).argmax(dim=1) == y
        for e in budgets:
            step = alpha if alpha is not None else 2.5 * (e / 255) / max(steps, 1)
            attacker = PGDAttacker(norm="linf", eps=e / 255, steps=steps, alpha=step, noise_std=0.0)
            adv = attacker(classifier, x, lambda logits: F.cross_entropy(logits, y, reduction="none"),
                           generator=generator)
            with torch.no_grad():
                alive = alive & (classifier(adv).argmax(dim=1) == y)
            correct[e] += int(alive.sum())
    n = max(len(images), 1)
    return {f"{e:g}/255": correct[e] / n for e in budgets}
