"""The registered metrics: each wraps a function of the family modules behind :class:`Metric`.

Names accepted by ``aft-hf evaluate --metrics``: zeroshot, robust, deletion, insertion, roar,
pointing, energy, gini (alias sparseness), randomisation. Each metric's options are a typed
dataclass (``Metric.Options``); each returns a :class:`~aft_hf.results.MetricResult`, built from its
flat report entries by its layout in :data:`aft_hf.results.FLAT_LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..registry import Registry
from ..results import FLAT_LAYOUTS, MetricResult, finite  # noqa: F401  (finite: re-exported, its old home)
from ..threat_models import DEFAULT_NORM, apgd_norms
from .apgd import APGDSpeed, attack_description
from .base import RAW_MAP, EvalContext, EvaluationError, Metric
from .complexity import gini
from .evaluators import SmallCNN
from .faithfulness import (
    RISE_BASELINES,
    ROAR_EVALUATORS,
    LinearProbe,
    RoarOptions,
    auc,
    normalised_auc,
    perturbation_curve,
    roar,
)
from .localisation import empty_masks, energy_in_mask, pointing_game
from .sanity import randomisation_check
from .stats import nanmean as _mean
from .zeroshot import ATTACKS, DEFAULT_ITERATIONS, predict, robust_shares, robust_verdicts, topk_accuracy


class ZeroShotAccuracy(Metric):
    name, family, shards = "zeroshot", "accuracy", True
    layout = FLAT_LAYOUTS["zeroshot"]
    citation = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"

    def compute(self, ctx: EvalContext) -> MetricResult:
        logits = predict(ctx.classifier, ctx.images, ctx.batch_size, ctx.progress, ctx.shard)
        acc = topk_accuracy(logits, ctx.labels, (1, 5))
        correct = (logits.argmax(1) == ctx.labels).float()
        out = self.result({"zeroshot_top1": acc["top1"], "zeroshot_top5": acc["top5"]}, {"": {"correct": correct}})
        out.verdicts = {"zeroshot_pred": logits.argmax(dim=1).tolist()}
        return out




@dataclass(frozen=True)
class RobustOptions:
    eps: Sequence[float] = (1, 2, 4)
    """Budgets in 1/255 units (per pixel for L-inf, the radius for L2)."""
    norm: str = DEFAULT_NORM
    """The threat model: ``linf`` (the field's table), ``l2``, or a registered norm that declares ``apgd_supported``."""
    attack: str = "apgd"
    """``apgd`` (APGD-CE then APGD-T) or ``pgd`` (the package's PGD)."""
    steps: Optional[int] = None
    """Iterations per attack run (None: 100 for APGD, 10 for PGD)."""
    alpha: Optional[float] = None
    """PGD step size (None: 2.5 * eps / steps)."""
    restarts: int = 1
    """APGD: random restarts."""
    targets: int = 9
    """APGD-T: target classes (0: APGD-CE only)."""
    mixed_precision: Optional[str] = None
    """Autocast of the attack's forward passes: ``no``, ``bf16`` or ``fp16`` (GPU); None: ``no``."""
    compile: bool = False
    """APGD: ``torch.compile`` the attack's forward (:class:`~aft_hf.evaluate.apgd.APGDSpeed`): a compilation
    first, then cheaper iterations; for long evaluations."""

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack '{self.attack}' (choose from {', '.join(ATTACKS)})")
        if self.norm not in apgd_norms():
            raise ValueError(f"norm {self.norm!r}: robust accuracy attacks {', '.join(apgd_norms())} (norms declaring "
                             "apgd_supported)")
        if self.compile and self.attack != "apgd":
            raise ValueError(f"compile applies to the APGD attack only (attack '{self.attack}' runs eager)")


class RobustAccuracy(Metric):
    name, family, shards = "robust", "accuracy", True
    layout = FLAT_LAYOUTS["robust"]
    citation = ("Croce & Hein 2020 (APGD-CE, APGD-T; AutoAttack) or Madry et al. 2018 (PGD); protocol of "
                "Schlarmann et al. 2024, Robust CLIP (FARE): attacks on the zero-shot logits, worst case per image")
    Options = RobustOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        o = self.options
        steps = o.steps or DEFAULT_ITERATIONS[o.attack]
        speed = APGDSpeed.from_mixed_precision(o.mixed_precision, ctx.class_weights.device, compile=o.compile)
        verdicts = robust_verdicts(ctx.classifier, ctx.images, ctx.labels, o.eps, steps, o.alpha, ctx.batch_size,
                                   ctx.seed, ctx.progress, o.attack, o.restarts, o.targets, norm=o.norm,
                                   shard=ctx.shard, speed=speed)
        acc = robust_shares(verdicts)
        setup = {"attack": o.attack, "name": attack_description(o.attack, o.norm, steps), "norm": o.norm, "steps": steps}
        if o.attack == "apgd":
            setup.update(restarts=o.restarts, targets=min(o.targets, ctx.class_weights.shape[0] - 1))
        if speed.autocast is not None:  # bf16 rounding can flip near-tie verdicts: the report says it was used
            setup["precision"] = o.mixed_precision
        if o.compile:
            setup["compiled"] = True
        out = self.result({"robust_top1": acc, "robust_attack": {**setup, "eps": list(acc)}})  # sorted, as its keys
        out.verdicts = {"robust": {k: v.tolist() for k, v in verdicts.items()}}
        return out




@dataclass(frozen=True)
class PerturbationOptions:
    steps: int = 20
    """Points on each curve."""
    baseline: Optional[str] = None
    """Uninformative image: ``zero``, ``blur`` or ``mean`` (None: RISE's, deletion zero and insertion blur)."""
    order: str = "most"
    """Perturb the most (MoRF) or the least (LeRF) relevant pixels first."""

    def __post_init__(self):
        if self.order not in ("most", "least"):
            raise ValueError(f"order must be 'most' or 'least', got {self.order!r}")


class _Perturbation(Metric):
    family = "faithfulness"
    citation = "Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
    consumes = ("pixel ranking of the " + RAW_MAP + "; curves of the true-class probability divided by the "
                "model's clean probability, against a random ranking on the same model and images")
    mode = "deletion"
    Options = PerturbationOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        o = self.options
        baseline = o.baseline or RISE_BASELINES[self.mode]
        clean = ctx.label_probability(ctx.images, ctx.labels)
        norm = clean.mean().clamp_min(1e-12)
        out, per_image = {}, {}
        for method in list(ctx.methods) + ["random"]:
            if method == "random":
                generator = torch.Generator().manual_seed(ctx.seed)
                maps = torch.rand(ctx.images.shape[0], 1, *ctx.images.shape[-2:], generator=generator)
            else:
                maps = ctx.maps(method)
            fractions, scores = perturbation_curve(ctx.label_probability, ctx.images, maps, ctx.labels, self.mode,
                                                   o.steps, baseline, ctx.batch_size, ctx.seed, ctx.progress, o.order)
            auc_norm = normalised_auc(fractions, scores, clean)
            per_image[method] = {"auc": auc_norm}
            out[method] = {"auc": auc_norm.mean().item(), "auc_unnormalised": auc(fractions, scores).mean().item(),
                           "curve": (scores.mean(0) / norm).tolist()}
        for method in ctx.methods:
            out[method]["random_auc"] = out["random"]["auc"]
            out[method]["auc_minus_random"] = out[method]["auc"] - out["random"]["auc"]
        return self.result({self.mode: {"fractions": fractions, "order": o.order, "baseline": baseline,
                                        "clean_probability": norm.item(), "normalised": "divided by clean_probability",
                                        "methods": out}}, per_image)




class Deletion(_Perturbation):
    name, mode = "deletion", "deletion"
    layout = FLAT_LAYOUTS["deletion"]


class Insertion(_Perturbation):
    name, mode = "insertion", "insertion"
    layout = FLAT_LAYOUTS["insertion"]


class ROAR(Metric):
    name, family = "roar", "faithfulness"
    layout = FLAT_LAYOUTS["roar"]
    citation = "Hooker, Erhan, Kindermans & Kim 2019, A Benchmark for Interpretability Methods in Deep Neural Networks"
    consumes = ("pixel ranking of the " + RAW_MAP + "; a retrained evaluator (report: evaluator), scored first "
                "on intact images against a floor")
    Options = RoarOptions

    def evaluator_factory(self, ctx: EvalContext):
        """seed -> evaluator. ``cnn`` (default): :class:`SmallCNN` from scratch; ``probe``: :class:`LinearProbe`
        on ctx.encoder (deterministic: its repeats agree)."""
        device = ctx.class_weights.device
        options = self.options
        if options.evaluator == "cnn":
            return lambda seed: SmallCNN(options.cnn, seed=seed, device=device)

        def features(x):
            with torch.no_grad():
                return ctx.encoder(x.to(device)).float()
        return lambda seed: LinearProbe(features, batch_size=ctx.batch_size)

    def compute(self, ctx: EvalContext) -> MetricResult:
        o = self.options
        factory = self.evaluator_factory(ctx)
        n = ctx.images.shape[0]
        if n < 4 or len(set(ctx.labels.tolist())) < 2:
            return self.result({"roar": {"skipped": "needs at least 4 images and 2 classes"}})
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed))
        train, test = order[: n // 2], order[n // 2:]
        maps = {m: ctx.maps(m) for m in ctx.methods}
        result = roar(ctx.images[train], ctx.labels[train], ctx.images[test], ctx.labels[test],
                      {m: v[train] for m, v in maps.items()}, {m: v[test] for m, v in maps.items()},
                      o.fractions, factory, seed=ctx.seed, progress=ctx.progress, repeats=o.repeats, floor=o.floor)
        result["evaluator"] = ROAR_EVALUATORS[o.evaluator]
        result["evaluator_kind"] = o.evaluator
        if o.evaluator == "cnn":
            result["evaluator_options"] = o.cnn.to_dict()
        result["split"] = {"train": len(train), "test": len(test)}
        return self.result({"roar": result})




def _n_empty(ctx: EvalContext) -> int:
    return int(empty_masks(ctx.masks).sum()) if ctx.masks is not None else 0


def default_tolerance(size: int) -> int:
    """The pointing game's 15 px at 224 px (Zhang et al.), scaled to the image size: 4 px at 64 px.

    A fixed 15 px would cover half of a small image, where every map "hits"."""
    return max(1, round(15 * size / 224))


@dataclass(frozen=True)
class PointingOptions:
    tolerance: Optional[int] = None
    """Pixels around the mask that count as a hit (None: 15 px at 224 px scaled to the image size)."""


class PointingGame(Metric):
    name, family, needs_masks = "pointing", "localisation", True
    layout = FLAT_LAYOUTS["pointing"]
    citation = "Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop"
    consumes = RAW_MAP + "; tied maxima: an image scores the share of its maximal pixels inside the mask"
    Options = PointingOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        tol = self.options.tolerance
        if tol is None:
            tol = default_tolerance(ctx.masks.shape[-1])
        per_image = {m: {"exact": pointing_game(ctx.maps(m), ctx.masks, 0),
                         f"tolerance_{tol}px": pointing_game(ctx.maps(m), ctx.masks, tol)} for m in ctx.methods}
        out = {m: {k: _mean(v) for k, v in d.items()} for m, d in per_image.items()}
        return self.result({"pointing_game": out, "n_empty_masks": _n_empty(ctx)}, per_image)




class EnergyInMask(Metric):
    name, family, needs_masks = "energy", "localisation", True
    layout = FLAT_LAYOUTS["energy"]
    citation = "Wang et al. 2020, Score-CAM (energy-based pointing game)"
    consumes = "positive part of the " + RAW_MAP

    def compute(self, ctx: EvalContext) -> MetricResult:
        out, per_image = {}, {}
        for m in ctx.methods:
            share, chance = energy_in_mask(ctx.maps(m), ctx.masks)
            per_image[m] = {"energy": share, "chance": chance}
            out[m] = {"energy": _mean(share), "chance": _mean(chance)}
        return self.result({"energy_in_mask": out, "n_empty_masks": _n_empty(ctx)}, per_image)




class Gini(Metric):
    name, family = "gini", "complexity"
    layout = FLAT_LAYOUTS["gini"]
    citation = "Chalasani et al. 2020, Concise Explanations of Neural Networks using Adversarial Training (Gini)"
    consumes = "|.| of the " + RAW_MAP

    def compute(self, ctx: EvalContext) -> MetricResult:
        per_image = {m: {"gini": gini(ctx.maps(m))} for m in ctx.methods}
        return self.result({"gini": {m: v["gini"].mean().item() for m, v in per_image.items()}}, per_image)




@dataclass(frozen=True)
class RandomisationOptions:
    max_images: int = 8
    """Images whose maps are compared (the check re-explains them with a randomised model)."""


class Randomisation(Metric):
    name, family = "randomisation", "sanity"
    layout = FLAT_LAYOUTS["randomisation"]
    citation = "Adebayo et al. 2018, Sanity Checks for Saliency Maps"
    consumes = "Spearman rank correlation of the " + RAW_MAP + " with the maps of a randomised model"
    Options = RandomisationOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        k = min(self.options.max_images, ctx.images.shape[0])
        images, targets = ctx.images[:k], ctx.targets(ctx.labels[:k])
        out, undefined = {}, {}
        for m in ctx.methods:
            res = randomisation_check(ctx.encoder, lambda enc: ctx.explainer(m, enc).attribute(images, targets), ctx.seed)
            out[m], undefined[m] = res["spearman_mean"], res["undefined"]
        return self.result({"randomisation_spearman": out, "randomisation_undefined": undefined})




ALIASES = {"sparseness": "gini", "complexity": "gini", "sanity": "randomisation", "accuracy": "zeroshot",
           "localisation": "pointing"}
METRICS: Registry = Registry("metric", EvaluationError, aliases=ALIASES)
"""The registry: ``--metrics`` names -> classes. A metric's name is also its key in ``report.json``'s ``results``;
``METRICS.resolve`` accepts the :data:`ALIASES` too (a metric registered under an alias's name wins over it)."""
register_metric = METRICS.register
for _cls in (ZeroShotAccuracy, RobustAccuracy, Deletion, Insertion, ROAR, PointingGame, EnergyInMask, Gini, Randomisation):
    register_metric(_cls)
