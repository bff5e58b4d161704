"""Zero-shot classification, the package's one implementation: a classifier from a text tower and
prompt templates, clean accuracy and robust accuracy (APGD-CE + APGD-T by default, or PGD).

Used by ``aft-hf evaluate`` (:mod:`aft_hf.evaluate.metrics`), by the evaluation during training
(:mod:`aft_hf.train_eval`) and by the synthetic world (:mod:`aft_hf.world.zeroshot`).

Logits are ``logit_scale * cos(f(x), w_c)`` with w_c the L2-normalised class embeddings
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").
Robust accuracy follows the robust-CLIP protocol (Schlarmann et al. 2024, FARE; Mao et al. 2023,
TeCoA): APGD-CE then APGD-T (Croce & Hein 2020) on the zero-shot logits, worst case per image,
eps in {1, 2, 4}/255. 10-step PGD is available for comparison and over-estimates robustness.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attack import PGDAttacker
from ..threat_models import DEFAULT_NORM, THREAT_MODELS, apgd_norms, robust_budget_problems
from .apgd import APGD_ITERATIONS, APGDSpeed, apgd_robust, autocast_context
from .errors import EvaluationError
from .sharding import Shard, batch_seed, map_batches, num_batches


class ZeroShotClassifier(nn.Module):
    """pixels in [0, 1] -> zero-shot logits (B, C); a module, so the attacker can freeze it."""

    def __init__(self, encoder: nn.Module, class_weights: Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("class_weights", F.normalize(class_weights.detach().float(), dim=-1), persistent=False)
        self.logit_scale = float(logit_scale)

    @classmethod
    def from_text(cls, encoder: Union[nn.Module, Callable[[Tensor], Tensor]], text, class_names: Sequence[str],
                  templates: Sequence[str] = ("a photo of a {}.",)) -> "ZeroShotClassifier":
        """The classifier of ``class_names`` from a :class:`~aft_hf.explain.targets.TextTower` and ``templates``:
        per class, the normalised mean of its normalised prompt embeddings; the text tower's logit scale."""
        device = next((p.device for p in getattr(encoder, "parameters", lambda: iter(()))()), torch.device("cpu"))
        return cls(encoder, text.class_embeddings(class_names, templates).to(device), text.logit_scale)

    def forward(self, images: Tensor) -> Tensor:
        """Zero-shot logits (B, C) for pixels in [0, 1]."""
        embeds = self.encoder(images).float()
        if embeds.shape[-1] != self.class_weights.shape[-1]:
            raise EvaluationError(f"class embeddings have dimension {self.class_weights.shape[-1]} but the image "
                                  f"embeddings have {embeds.shape[-1]}: use the text tower of the same CLIP")
        # the head stays fp32 under autocast: bf16 logits (8 mantissa bits) at logit scale 100 would tie classes
        with torch.autocast(device_type=embeds.device.type, enabled=False):
            return self.logit_scale * F.normalize(embeds, dim=-1) @ self.class_weights.to(embeds.device).T


def _progress_bar(n: int, batch_size: int, shard: Optional[Shard], desc: str = "zero-shot",
                   progress: bool = True):
    """A progress bar over this process's batches (shown on the main process only)."""
    shard = shard or Shard()
    total = len(shard.batches(num_batches(n, batch_size)))
    return tqdm(total=total, desc=desc, disable=not progress or total <= 1 or not shard.is_main, leave=False)


@torch.no_grad()
def predict(classifier: ZeroShotClassifier, images: Tensor, batch_size: int = 64, progress: bool = True,
            shard: Optional[Shard] = None) -> Tensor:
    """Zero-shot logits (N, C) for images (N, 3, H, W) in [0, 1].

    With a ``shard`` of several processes each computes its batches (:mod:`aft_hf.evaluate.sharding`)
    and every process returns the logits of all images, in order."""
    classifier.eval()
    device = classifier.class_weights.device
    bar = _progress_bar(len(images), batch_size, shard, "zero-shot", progress)

    def logits(b: int, s: int, e: int) -> Tensor:
        bar.update(1)
        return classifier(images[s:e].to(device)).cpu()

    parts = map_batches(len(images), batch_size, logits, shard, "zero-shot logits")
    bar.close()
    return torch.cat(parts) if parts else torch.empty(0, classifier.class_weights.shape[0])


def check_labels(labels: Tensor, class_names: Sequence[str]) -> None:
    """Refuse labels that index past the class names (a names file shorter than the label set)."""
    if len(labels) and int(labels.max()) >= len(class_names):
        raise EvaluationError(f"label {int(labels.max())} has no class name ({len(class_names)} names given)")
    if len(labels) and int(labels.min()) < 0:
        raise EvaluationError(f"label {int(labels.min())} is negative: labels are class indices from 0")


def label_indices(values: Sequence, class_names: Optional[Sequence[str]]) -> tuple[Tensor, Optional[list[str]]]:
    """Class indices of labels given as indices or as class names (``"cat"``), and the class names.

    Names are looked up in ``class_names``; with no names given, the distinct names found become the
    classes, sorted. Integer labels pass through (checked by :func:`check_labels` against the names).
    """
    if all(isinstance(v, str) for v in values) and values:
        found = sorted(set(values))
        names = list(class_names) if class_names is not None else found
        index = {n: i for i, n in enumerate(names)}
        missing = [v for v in found if v not in index]
        if missing:
            raise EvaluationError(f"label '{missing[0]}' is not one of the {len(names)} class names "
                                  f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        return torch.tensor([index[v] for v in values]), names
    ints = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, float)) or \
                (isinstance(v, float) and not v.is_integer()):
            raise EvaluationError(f"labels must be class indices or class names, got {v!r:.80}")
        ints.append(int(v))
    labels = torch.tensor(ints, dtype=torch.long)
    if class_names is not None:
        check_labels(labels, class_names)
    return labels, None if class_names is None else list(class_names)


def zero_shot_accuracy(classifier: ZeroShotClassifier, images: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5),
                       batch_size: int = 64, progress: bool = True) -> dict[str, Optional[float]]:
    """Clean zero-shot top-k accuracies of ``classifier`` ({"top1": ..., "top5": ...}, see :func:`topk_accuracy`)."""
    return topk_accuracy(predict(classifier, images, batch_size, progress), labels, ks)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, Optional[float]]:
    """{"top1": ..., "top5": ...}: fraction of labels among the k highest logits.

    With fewer than k classes top-k is None (not applicable: every label would count as found)."""
    if logits.dim() != 2 or labels.numel() != logits.shape[0]:
        raise EvaluationError(f"logits must be (N, C) and labels (N,); got {tuple(logits.shape)} and "
                              f"{tuple(labels.shape)}")
    out = {}
    for k in ks:
        if k > logits.shape[1]:
            out[f"top{k}"] = None
            continue
        hits = (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
        out[f"top{k}"] = hits.float().mean().item() if len(labels) else float("nan")
    return out


ATTACKS = ("apgd", "pgd")
DEFAULT_ITERATIONS = {"apgd": APGD_ITERATIONS, "pgd": 10}


def robust_accuracy(classifier: ZeroShotClassifier, images: Tensor, labels: Tensor,
                    eps: Sequence[float] = (1, 2, 4), steps: Optional[int] = None, alpha: Optional[float] = None,
                    batch_size: int = 64, seed: int = 0, progress: bool = True, attack: str = "apgd",
                    restarts: int = 1, targets: int = 9, norm: str = DEFAULT_NORM,
                    shard: Optional[Shard] = None, speed: Optional[APGDSpeed] = None) -> dict[str, float]:
    """Top-1 accuracy under attack for each budget in ``eps`` (1/255 units); keys like ``"4/255"``: the
    share of images :func:`robust_verdicts` finds robust (same arguments)."""
    return robust_shares(robust_verdicts(classifier, images, labels, eps, steps, alpha, batch_size, seed, progress,
                                         attack, restarts, targets, norm, shard, speed))


def robust_shares(verdicts: dict[str, Tensor]) -> dict[str, float]:
    """Robust accuracy per budget from :func:`robust_verdicts`' per-image verdicts (0 images: 0.0)."""
    return {key: int(v.sum()) / max(len(v), 1) for key, v in verdicts.items()}


def robust_verdicts(classifier: ZeroShotClassifier, images: Tensor, labels: Tensor,
                    eps: Sequence[float] = (1, 2, 4), steps: Optional[int] = None, alpha: Optional[float] = None,
                    batch_size: int = 64, seed: int = 0, progress: bool = True, attack: str = "apgd",
                    restarts: int = 1, targets: int = 9, norm: str = DEFAULT_NORM,
                    shard: Optional[Shard] = None, speed: Optional[APGDSpeed] = None) -> dict[str, Tensor]:
    """Per image (bool tensor (N,), on the CPU), whether it is robust at each budget in ``eps`` (1/255 units).

    ``attack="apgd"`` (default, the field's protocol): APGD-CE then APGD-T against ``targets`` classes,
    ``restarts`` runs each, ``steps`` iterations (default 100), see :mod:`aft_hf.evaluate.apgd`; ``norm``
    is L-inf by default, or another threat model APGD supports (``l2``: ``eps`` is then an L2 radius in
    1/255 units). ``attack="pgd"``: the package's PGD in the same norm, ``steps`` iterations (default 10),
    step ``alpha`` (default 2.5 * eps / steps), momentum 0.9, random start; weaker, so it over-estimates
    robustness.

    An image counts as robust at budget e when it is classified correctly clean and survives every
    attack at every budget <= e (all lie inside the e-ball, and the adversary may pick any of them),
    so the numbers never exceed the clean accuracy and never rise with e.

    Each batch's attack is seeded by (``seed``, batch, budget) (:func:`~aft_hf.evaluate.sharding.batch_seed`),
    so with a ``shard`` of several processes each attacks its own batches and every process returns the
    verdicts of all images, equal to one process's.
    ``speed`` (:class:`~aft_hf.evaluate.apgd.APGDSpeed`): how APGD runs; its ``autocast`` (e.g. ``torch.bfloat16``,
    what ``--mixed-precision bf16`` sets) also covers the clean forward and PGD. The clean logits of each batch
    are computed once and handed to every budget's attack.
    """
    speed = APGDSpeed() if speed is None else speed
    if attack not in ATTACKS:
        raise EvaluationError(f"unknown attack '{attack}' (choose from {', '.join(ATTACKS)})")
    if norm not in apgd_norms():
        raise EvaluationError(f"robust accuracy attacks {', '.join(apgd_norms())} (the norms APGD supports), not "
                              f"{'norm' if norm in THREAT_MODELS else 'unknown norm'} '{norm}'")
    if len(images) != len(labels):
        raise EvaluationError(f"{len(images)} images but {len(labels)} labels")
    steps = DEFAULT_ITERATIONS[attack] if steps is None else steps
    budgets = sorted(float(e) for e in eps)
    problems = robust_budget_problems(budgets, norm)
    if problems:
        raise EvaluationError(f"eps: {problems[0]}")
    device = classifier.class_weights.device
    bar = _progress_bar(len(images), batch_size, shard, f"robust ({attack})", progress)

    def batch(b: int, s: int, e: int) -> Tensor:
        x, y = images[s:e].to(device), labels[s:e].to(device)
        with torch.no_grad(), autocast_context(x.device, speed.autocast):
            clean = classifier(x).float()  # once per batch, handed to every budget's attack
        alive = clean.argmax(dim=1) == y
        out = []
        for i, budget in enumerate(budgets):
            seed_b = batch_seed(seed, b, i)
            if attack == "apgd":  # the whole batch, so side-by-side targets may use the batch's rows
                if alive.any():
                    alive = apgd_robust(classifier, x, y, budget / 255, norm, steps, restarts, targets, seed_b,
                                        clean_logits=clean, speed=speed, alive=alive)
            else:
                generator = torch.Generator(device=device).manual_seed(seed_b)
                with autocast_context(x.device, speed.autocast):
                    alive = alive & _pgd_robust(classifier, x, y, budget, steps, alpha, generator, norm)
            out.append(alive.cpu().clone())
        bar.update(1)
        return torch.stack(out, dim=1) if out else torch.zeros(e - s, 0, dtype=torch.bool)

    parts = map_batches(len(images), batch_size, batch, shard, f"robust verdicts ({attack})")
    bar.close()
    table = torch.cat(parts) if parts else torch.zeros(0, len(budgets), dtype=torch.bool)
    return {f"{e:g}/255": table[:, i] for i, e in enumerate(budgets)}


def _pgd_robust(classifier: ZeroShotClassifier, x: Tensor, y: Tensor, eps: float, steps: int,
                alpha: Optional[float], generator: torch.Generator, norm: str = DEFAULT_NORM) -> Tensor:
    step = alpha if alpha is not None else 2.5 * (eps / 255) / max(steps, 1)
    # a zero budget leaves the images as they are: no steps (an attack with eps 0 is refused)
    attacker = PGDAttacker(norm=norm, eps=eps / 255, steps=steps if eps > 0 else 0, alpha=step, noise_std=0.0)
    adv = attacker(classifier, x, lambda logits: F.cross_entropy(logits, y, reduction="none"), generator=generator)
    with torch.no_grad():
        return classifier(adv).argmax(dim=1) == y
