"""Faithfulness of attribution maps: deletion/insertion curves and ROAR (with real retraining).

- Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models"): pixels are removed most-relevant-first from the image
  (deletion: a faithful map makes the score fall fast, low AUC), or inserted most-relevant-first
  into an uninformative image (insertion: the score rises fast, high AUC). No retraining.
  Baseline images as in RISE: deletion paints removed pixels black (``zero``), insertion starts
  from a heavily blurred copy of the image (``blur``); ``mean`` (per-image channel mean) is the
  other choice. To compare models, :func:`normalised_auc` divides by the model's clean probability.
- ROAR (Hooker, Erhan, Kindermans & Kim 2019, "A Benchmark for Interpretability Methods in Deep
  Neural Networks"): the top k% pixels of every train and test image are replaced by an
  uninformative value and a fresh evaluator is *retrained* on the modified train split; test
  accuracy vs k, against a random ranking. A faithful method makes accuracy fall faster. The
  default evaluator is a small CNN trained from scratch (:class:`SmallCNN`, the same for every model
  and method); :class:`LinearProbe` on the evaluated model's frozen embeddings is a cheaper variant.
  ROAR first scores the evaluator on intact held-out images and reports that accuracy beside every
  curve; below a floor (default 0.8) it is flagged and no curve is drawn as a result: a weak
  evaluator starts every curve low and its drops are noise.

All of them rank pixels by the raw map (see :mod:`aft_hf.evaluate.base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..results import sample_sd
from .errors import EvaluationError
from .evaluators import CNNOptions

DEFAULT_ROAR_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_ROAR_FLOOR = 0.8
"""Below this accuracy on intact held-out images, ROAR's evaluator is flagged and its curves are not a result."""
RISE_BASELINES = {"deletion": "zero", "insertion": "blur"}  # what RISE starts from / fills in


def pixel_ranking(maps: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per image, pixel indices (B, H*W) from most to least relevant; ties broken at random."""
    flat = maps.detach().float().flatten(1)
    jitter = torch.rand(flat.shape, generator=generator) * 1e-6 * (flat.abs().max().clamp_min(1e-12))
    return (flat + jitter.to(flat.device)).argsort(dim=1, descending=True)


def top_fraction_mask(ranking: Tensor, fraction: float, shape: tuple[int, int]) -> Tensor:
    """(B, 1, H, W) mask of the top ``fraction`` pixels of each ranking."""
    b, n = ranking.shape
    count = int(round(fraction * n))
    mask = torch.zeros(b, n, device=ranking.device)
    if count:
        mask.scatter_(1, ranking[:, :count], 1.0)
    return mask.view(b, 1, *shape)


def uninformative(images: Tensor, kind: str = "mean") -> Tensor:
    """Fill images: ``mean`` (per image and channel), ``zero`` (black), ``blur`` (heavy box blur)."""
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "blur":
        k = max(3, (min(images.shape[-2:]) // 4) | 1)
        return F.avg_pool2d(F.pad(images, [k // 2] * 4, mode="replicate"), k, stride=1)
    raise EvaluationError(f"unknown baseline '{kind}' (mean, zero, blur)")


def auc(fractions: Sequence[float], scores: Tensor) -> Tensor:
    """Trapezoid area under score(fraction) curves: (B, S) -> (B,)."""
    x = torch.as_tensor(list(fractions), dtype=torch.float32)
    return torch.trapezoid(scores.float(), x, dim=-1)


def normalised_auc(fractions: Sequence[float], scores: Tensor, clean: Tensor) -> Tensor:
    """Per-image AUCs (B,) divided by the model's clean probability ``clean.mean()`` (its images unmodified).

    One normaliser per model (the mean over its images, not per image, so an image the model barely
    believes cannot blow up), which makes a perfect deletion curve start at 1 for every model: a less
    confident model no longer looks better at deletion only because its curve starts lower.
    """
    return auc(fractions, scores) / clean.float().mean().clamp_min(1e-12)


@torch.no_grad()
def perturbation_curve(score_fn: Callable[[Tensor, Tensor], Tensor], images: Tensor, maps: Tensor,
                       labels: Optional[Tensor] = None, mode: str = "deletion", steps: int = 20,
                       baseline: Optional[str] = None, batch_size: int = 32, seed: int = 0,
                       progress: bool = True, order: str = "most") -> tuple[list[float], Tensor]:
    """Deletion or insertion curve per image.

    ``score_fn(images, labels) -> (B,)`` scores a batch (e.g. the zero-shot probability of the
    label). ``order="most"`` perturbs most-relevant-first (MoRF, the RISE curves), ``"least"``
    least-relevant-first (LeRF: a faithful map keeps the deletion score high). ``baseline``: the
    uninformative image (``None`` = RISE's: ``zero`` for deletion, ``blur`` for insertion). Returns
    (fractions of pixels removed/inserted, scores (N, steps + 1)).
    """
    if mode not in ("deletion", "insertion"):
        raise EvaluationError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    baseline = baseline or RISE_BASELINES[mode]
    if order not in ("most", "least"):
        raise EvaluationError(f"order must be 'most' or 'least', got {order!r}")
    maps = maps if order == "most" else -maps
    generator = torch.Generator().manual_seed(seed)
    fractions = [i / steps for i in range(steps + 1)]
    labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long)
    rows = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=mode, disable=not progress or len(starts) <= 1, leave=False):
        x, y = images[s:s + batch_size], labels[s:s + batch_size]
        ranking = pixel_ranking(maps[s:s + batch_size], generator)
        base = uninformative(x, baseline)
        scores = []
        for f in fractions:
            m = top_fraction_mask(ranking, f, tuple(x.shape[-2:])).to(x)
            xk = x * (1 - m) + base * m if mode == "deletion" else base * (1 - m) + x * m
            scores.append(score_fn(xk, y).float().cpu())
        rows.append(torch.stack(scores, dim=1))
    return fractions, torch.cat(rows)


# --------------------------------------------------------------------------- ROAR


class Evaluator(Protocol):
    """What ROAR retrains: ``fit`` on (images, labels), then ``accuracy`` on held-out data."""

    def fit(self, images: Tensor, labels: Tensor) -> None: ...

    def accuracy(self, images: Tensor, labels: Tensor) -> float: ...


class LinearProbe:
    """Multinomial logistic regression on frozen features (default ROAR evaluator).

    Args:
        feature_fn: images -> features (B, F), e.g. a frozen CLIP image encoder; ``None`` = raw pixels.
        weight_decay: L2 penalty on the weights. max_iter: L-BFGS iterations.
    """

    def __init__(self, feature_fn: Optional[Callable[[Tensor], Tensor]] = None, weight_decay: float = 1e-3,
                 max_iter: int = 100, batch_size: int = 64):
        self.feature_fn, self.weight_decay, self.max_iter, self.batch_size = feature_fn, weight_decay, max_iter, batch_size
        self.linear: Optional[nn.Linear] = None

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        if self.feature_fn is None:
            return images.flatten(1).float()
        return torch.cat([self.feature_fn(images[s:s + self.batch_size]).float().cpu()
                          for s in range(0, len(images), self.batch_size)])

    def fit(self, images: Tensor, labels: Tensor) -> None:
        feats = self.features(images)
        self.mu, self.sigma = feats.mean(0), feats.std(0).clamp_min(1e-6)
        z = (feats - self.mu) / self.sigma
        num_classes = int(labels.max()) + 1
        self.linear = nn.Linear(z.shape[1], num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        opt = torch.optim.LBFGS(self.linear.parameters(), max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self.linear(z), labels) + self.weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        if self.linear is None:
            raise RuntimeError("fit the probe first")
        z = (self.features(images) - self.mu) / self.sigma
        return (self.linear(z).argmax(1) == labels).float().mean().item()


def remove_top(images: Tensor, maps: Tensor, fraction: float, fill: Tensor,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace each image's top ``fraction`` pixels (by its map) with ``fill`` (3,) or broadcastable."""
    mask = top_fraction_mask(pixel_ranking(maps, generator), fraction, tuple(images.shape[-2:])).to(images)
    return images * (1 - mask) + fill.view(1, -1, 1, 1).to(images) * mask


ROAR_EVALUATORS = {
    "cnn": "small CNN trained from scratch on the modified images (same architecture, schedule and seed "
           "for every model and method)",
    "probe": "linear probe (L-BFGS logistic regression) on the evaluated model's frozen image embeddings",
}


@dataclass(frozen=True)
class RoarOptions:
    """ROAR's settings (``aft-hf evaluate --roar-*``); each is validated on construction."""

    fractions: tuple[float, ...] = DEFAULT_ROAR_FRACTIONS
    """Fractions of the pixels removed (each strictly between 0 and 1)."""
    evaluator: str = "cnn"
    """``cnn`` (:class:`SmallCNN` from scratch) or ``probe`` (a linear probe on the model's embeddings)."""
    cnn: CNNOptions = field(default_factory=CNNOptions)
    """The CNN's architecture and schedule (a dict of :class:`CNNOptions` fields is accepted)."""
    repeats: int = 1
    """Evaluators trained per point (seeds seed .. seed + repeats - 1): their spread is the retraining noise."""
    floor: float = DEFAULT_ROAR_FLOOR
    """Minimum accuracy of the evaluator on intact held-out images for ROAR to be a result (0: no floor)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "cnn", CNNOptions.coerce(self.cnn))
        if self.evaluator not in ROAR_EVALUATORS:
            raise EvaluationError(f"unknown ROAR evaluator '{self.evaluator}' "
                                  f"(choose from {', '.join(ROAR_EVALUATORS)})")
        if not self.fractions or any(not 0 < f < 1 for f in self.fractions):
            raise EvaluationError(f"ROAR fractions must lie in (0, 1), got {list(self.fractions)}")
        if int(self.repeats) < 1:
            raise EvaluationError(f"ROAR repeats must be >= 1, got {self.repeats}")
        if not 0 <= self.floor <= 1:
            raise EvaluationError(f"the ROAR floor is an accuracy in [0, 1], got {self.floor}")

    @classmethod
    def from_dict(cls, d: dict) -> "RoarOptions":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise EvaluationError(f"unknown ROAR option(s) {unknown} (valid: {', '.join(cls.__dataclass_fields__)})")
        return cls(**d)


def _probe(seed: int) -> Evaluator:
    """The default evaluator factory of :func:`roar`: a linear probe on raw pixels (deterministic, seed unused)."""
    return LinearProbe()


def roar(train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
         train_maps: dict[str, Tensor], test_maps: dict[str, Tensor],
         fractions: Sequence[float] = DEFAULT_ROAR_FRACTIONS,
         evaluator_factory: Callable[[int], Evaluator] = _probe, random_baseline: bool = True,
         seed: int = 0, progress: bool = True, repeats: int = 1, floor: float = DEFAULT_ROAR_FLOOR) -> dict:
    """RemOve And Retrain, with the evaluator's accuracy on intact images and a floor on it.

    ``evaluator_factory(s)`` returns a fresh evaluator trained with seed ``s``; ``repeats`` evaluators
    (seeds ``seed`` .. ``seed + repeats - 1``) are trained per point on the same modified images, so
    the spread over them is the retraining noise. The fill value is the per-channel mean of the train
    images (uninformative, as in Hooker et al.).

    First the evaluators are trained on the intact train images and scored on the intact test
    images (``intact_accuracy``, mean over repeats). Below ``floor`` the evaluator cannot read the
    data well enough for a drop to mean anything: the result is flagged (``below_floor``, and
    ``skipped`` says why), no curve is computed and none is drawn. Otherwise::

        {"fractions": [0, k...], "accuracy": {name|"random": [mean over repeats per point]},
         "accuracy_sd": {name: [sd over repeats or None]}, "per_seed": {name: [[curve of one seed]]},
         "intact_accuracy": float, "intact_accuracy_per_seed": [float], "evaluator_seeds": [int],
         "floor": float, "below_floor": false, "test_images": int}

    The first point of every curve is the intact accuracy (no pixel removed).
    """
    if set(train_maps) != set(test_maps):
        raise EvaluationError("train_maps and test_maps must hold the same methods")
    fractions = [float(f) for f in fractions]
    if any(not 0 < f < 1 for f in fractions):
        raise EvaluationError(f"ROAR fractions must lie in (0, 1), got {fractions}")
    if repeats < 1 or not 0 <= floor <= 1:
        raise EvaluationError(f"ROAR needs repeats >= 1 and a floor in [0, 1], got {repeats} and {floor}")
    generator = torch.Generator().manual_seed(seed)
    train_maps, test_maps = dict(train_maps), dict(test_maps)
    if random_baseline:
        train_maps["random"] = torch.rand(train_images.shape[0], 1, *train_images.shape[-2:], generator=generator)
        test_maps["random"] = torch.rand(test_images.shape[0], 1, *test_images.shape[-2:], generator=generator)
    seeds = [seed + r for r in range(repeats)]
    bar = tqdm(total=repeats * (1 + len(train_maps) * len(fractions)), desc="ROAR retraining", disable=not progress,
               leave=False)

    def scores(xtr: Tensor, xte: Tensor) -> list[float]:
        out = []
        for s in seeds:
            evaluator = evaluator_factory(s)
            evaluator.fit(xtr, train_labels)
            out.append(evaluator.accuracy(xte, test_labels))
            bar.update()
        return out

    intact = scores(train_images, test_images)
    mean = sum(intact) / len(intact)
    result = {"fractions": [0.0] + fractions, "intact_accuracy": mean, "intact_accuracy_per_seed": intact,
              "evaluator_seeds": seeds, "floor": float(floor), "below_floor": mean < floor,
              "test_images": int(test_images.shape[0])}
    if mean < floor:
        bar.close()
        result["skipped"] = (f"the evaluator reaches {mean:.3f} on intact held-out images, below the floor "
                             f"{floor:.2f}: a ROAR curve would not be a result (give it more training images, "
                             "epochs or capacity)")
        return result
    fill = train_images.mean(dim=(0, 2, 3))
    per_seed: dict[str, list[list[float]]] = {}
    for name in train_maps:
        per_seed[name] = [[a] for a in intact]
        for f in fractions:
            xtr = remove_top(train_images, train_maps[name], f, fill, generator)
            xte = remove_top(test_images, test_maps[name], f, fill, generator)
            for curve, acc in zip(per_seed[name], scores(xtr, xte)):
                curve.append(acc)
    bar.close()
    points = {name: list(zip(*curves)) for name, curves in per_seed.items()}
    result["accuracy"] = {name: [sum(p) / len(p) for p in pts] for name, pts in points.items()}
    result["accuracy_sd"] = {name: [sample_sd(p) for p in pts] for name, pts in points.items()}
    result["per_seed"] = per_seed
    return result


def roar_flag(result: dict) -> Optional[str]:
    """Why a ROAR result is not a result (its evaluator is below the floor, or ROAR was skipped), else ``None``."""
    if result.get("below_floor") or "accuracy" not in result:
        return result.get("skipped", "no ROAR curve")
    return None
