"""Zero-shot classification accuracy, clean and under attack (APGD-CE + APGD-T by default, or PGD).

Logits are ``logit_scale * cos(f(x), w_c)`` with w_c the L2-normalised class embeddings
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").
Robust accuracy follows the robust-CLIP protocol (Schlarmann et al. 2024, FARE; Mao et al. 2023,
TeCoA): APGD-CE then APGD-T (Croce & Hein 2020) on the zero-shot logits, worst case per image,
eps in {1, 2, 4}/255. 10-step PGD is available for comparison and over-estimates robustness.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attack import PGDAttacker
from .apgd import APGDSpeed, apgd_robust, autocast_context
from .errors import EvaluationError


class ZeroShotClassifier(nn.Module):
    """pixels in [0, 1] -> zero-shot logits (B, C); a module, so the attacker can freeze it."""

    def __init__(self, encoder: nn.Module, class_weights: Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("class_weights", F.normalize(class_weights.detach().float(), dim=-1), persistent=False)
        self.logit_scale = float(logit_scale)

    def forward(self, images: Tensor) -> Tensor:
        """Zero-shot logits (B, C) for pixels in [0, 1]."""
        embeds = self.encoder(images).float()
        if embeds.shape[-1] != self.class_weights.shape[-1]:
            raise EvaluationError(f"class embeddings have dimension {self.class_weights.shape[-1]} but the image "
                                  f"embeddings have {embeds.shape[-1]}: use the text tower of the same CLIP")
        # the head stays fp32 under autocast: bf16 logits (8 mantissa bits) at logit scale 100 would tie classes
        with torch.autocast(device_type=embeds.device.type, enabled=False):
            return self.logit_scale * F.normalize(embeds, dim=-1) @ self.class_weights.to(embeds.device).T


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
    if logits.dim() != 2 or labels.numel() != logits.shape[0]:
        raise EvaluationError(f"logits must be (N, C) and labels (N,); got {tuple(logits.shape)} and "
                              f"{tuple(labels.shape)}")
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hits = (logits.topk(kk, dim=1).indices == labels.view(-1, 1)).any(dim=1)
        out[f"top{k}"] = hits.float().mean().item() if len(labels) else float("nan")
    return out


ATTACKS = ("apgd", "pgd")
DEFAULT_ITERATIONS = {"apgd": 100, "pgd": 10}


def robust_accuracy(classifier: ZeroShotClassifier, images: Tensor, labels: Tensor,
                    eps: Sequence[float] = (1, 2, 4), steps: Optional[int] = None, alpha: Optional[float] = None,
                    batch_size: int = 64, seed: int = 0, progress: bool = True, attack: str = "apgd",
                    restarts: int = 1, targets: int = 9, norm: str = "linf",
                    speed: Optional[APGDSpeed] = None) -> dict[str, float]:
    """Top-1 accuracy under attack for each budget in ``eps`` (1/255 units); keys like ``"4/255"``.

    ``attack="apgd"`` (default, the field's protocol): APGD-CE then APGD-T against ``targets`` classes,
    ``restarts`` runs each, ``steps`` iterations (default 100), see :mod:`aft_hf.evaluate.apgd`; L-inf
    or ``norm="l2"`` (then ``eps`` is an L2 radius in 1/255 units). ``attack="pgd"``: the package's L-inf
    PGD, ``steps`` iterations (default 10), step ``alpha`` (default 2.5 * eps / steps), momentum 0.9,
    random start; weaker, so it over-estimates robustness.

    An image counts as robust at budget e when it is classified correctly clean and survives every
    attack at every budget <= e (all lie inside the e-ball, and the adversary may pick any of them),
    so the numbers never exceed the clean accuracy and never rise with e.

    ``speed`` (:class:`~aft_hf.evaluate.apgd.APGDSpeed`): how APGD runs; its ``autocast`` (e.g. ``torch.bfloat16``,
    what ``--mixed-precision bf16`` sets) also covers the clean forward and PGD. The clean logits of each batch
    are computed once and handed to every budget's attack.
    """
    speed = APGDSpeed() if speed is None else speed
    if attack not in ATTACKS:
        raise EvaluationError(f"unknown attack '{attack}' (choose from {', '.join(ATTACKS)})")
    if norm not in ("linf", "l2"):
        raise EvaluationError(f"unknown norm '{norm}' for robust accuracy (choose from linf, l2)")
    if attack == "pgd" and norm != "linf":
        raise EvaluationError("the PGD evaluation attack is L-inf only; use attack='apgd' for L2")
    if len(images) != len(labels):
        raise EvaluationError(f"{len(images)} images but {len(labels)} labels")
    steps = DEFAULT_ITERATIONS[attack] if steps is None else steps
    budgets = sorted(float(e) for e in eps)
    if any(e < 0 for e in budgets):
        raise EvaluationError(f"eps must be >= 0 (1/255 units), got {list(eps)}")
    device = classifier.class_weights.device
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = {e: 0 for e in budgets}
    for s in _batches(len(images), batch_size, f"robust ({attack})", progress):
        x, y = images[s:s + batch_size].to(device), labels[s:s + batch_size].to(device)
        with torch.no_grad(), autocast_context(x.device, speed.autocast):
            clean = classifier(x).float()
        alive = clean.argmax(dim=1) == y
        for e in budgets:
            if attack == "apgd":
                idx = alive.nonzero().squeeze(1)
                if idx.numel():
                    alive[idx] = apgd_robust(classifier, x[idx], y[idx], e / 255, norm, steps, restarts, targets,
                                             seed + s, clean_logits=clean[idx], speed=speed)
            else:
                with autocast_context(x.device, speed.autocast):
                    alive = alive & _pgd_robust(classifier, x, y, e, steps, alpha, generator)
            correct[e] += int(alive.sum())
    n = max(len(images), 1)
    return {f"{e:g}/255": correct[e] / n for e in budgets}


def _pgd_robust(classifier: ZeroShotClassifier, x: Tensor, y: Tensor, eps: float, steps: int,
                alpha: Optional[float], generator: torch.Generator) -> Tensor:
    step = alpha if alpha is not None else 2.5 * (eps / 255) / max(steps, 1)
    attacker = PGDAttacker(norm="linf", eps=eps / 255, steps=steps, alpha=step, noise_std=0.0)
    adv = attacker(classifier, x, lambda logits: F.cross_entropy(logits, y, reduction="none"), generator=generator)
    with torch.no_grad():
        return classifier(adv).argmax(dim=1) == y
