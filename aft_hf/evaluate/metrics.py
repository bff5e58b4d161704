"""The registered metrics: each wraps a function of the family modules behind :class:`Metric`.

Names accepted by ``aft-hf evaluate --metrics``: zeroshot, robust, deletion, insertion, roar,
pointing, energy, sparseness, randomisation.
"""

from __future__ import annotations

import math

import torch

from .base import RAW_MAP, EvalContext, Metric
from .complexity import gini
from .evaluators import SmallCNN
from .faithfulness import (
    DEFAULT_ROAR_FRACTIONS, RISE_BASELINES, LinearProbe, auc, normalised_auc, perturbation_curve, roar,
)
from .localisation import empty_masks, energy_in_mask, pointing_game
from .sanity import randomisation_check
from .apgd import APGDSpeed, attack_description
from .stats import nanmean as _mean
from .zeroshot import DEFAULT_ITERATIONS, predict, robust_accuracy, topk_accuracy


class ZeroShotAccuracy(Metric):
    name, family = "zeroshot", "accuracy"
    citation = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"

    def compute(self, ctx: EvalContext) -> dict:
        logits = predict(ctx.classifier, ctx.images, ctx.batch_size, ctx.progress)
        acc = topk_accuracy(logits, ctx.labels, (1, 5))
        return {"zeroshot_top1": acc["top1"], "zeroshot_top5": acc["top5"]}


class RobustAccuracy(Metric):
    name, family = "robust", "accuracy"
    citation = ("Croce & Hein 2020 (APGD-CE, APGD-T; AutoAttack) or Madry et al. 2018 (PGD); protocol of "
                "Schlarmann et al. 2024, Robust CLIP (FARE): attacks on the zero-shot logits, worst case per image")

    def compute(self, ctx: EvalContext) -> dict:
        eps = self.options.get("eps", (1, 2, 4))
        attack = self.options.get("attack", "apgd")
        steps = self.options.get("steps") or DEFAULT_ITERATIONS[attack]
        restarts, targets = self.options.get("restarts", 1), self.options.get("targets", 9)
        speed = APGDSpeed.from_mixed_precision(self.options.get("mixed_precision"), ctx.class_weights.device)
        acc = robust_accuracy(ctx.classifier, ctx.images, ctx.labels, eps, steps, self.options.get("alpha"),
                              ctx.batch_size, ctx.seed, ctx.progress, attack, restarts, targets, speed=speed)
        setup = {"attack": attack, "name": attack_description(attack, "linf", steps), "norm": "linf", "steps": steps}
        if attack == "apgd":
            setup.update(restarts=restarts, targets=min(targets, ctx.class_weights.shape[0] - 1))
        return {"robust_top1": acc, "robust_attack": {**setup, "eps": [f"{e:g}/255" for e in eps]}}


class _Perturbation(Metric):
    family = "faithfulness"
    citation = "Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
    consumes = ("pixel ranking of the " + RAW_MAP + "; curves of the true-class probability divided by the "
                "model's clean probability, against a random ranking on the same model and images")
    mode = "deletion"

    def compute(self, ctx: EvalContext) -> dict:
        steps = self.options.get("steps", 20)
        baseline = self.options.get("baseline") or RISE_BASELINES[self.mode]
        order = self.options.get("order", "most")
        clean = ctx.label_probability(ctx.images, ctx.labels)
        norm = clean.mean().clamp_min(1e-12)
        out = {}
        for method in list(ctx.methods) + ["random"]:
            if method == "random":
                generator = torch.Generator().manual_seed(ctx.seed)
                maps = torch.rand(ctx.images.shape[0], 1, *ctx.images.shape[-2:], generator=generator)
            else:
                maps = ctx.maps(method)
            fractions, scores = perturbation_curve(ctx.label_probability, ctx.images, maps, ctx.labels, self.mode,
                                                   steps, baseline, ctx.batch_size, ctx.seed, ctx.progress, order)
            out[method] = {"auc": normalised_auc(fractions, scores, clean).mean().item(),
                           "auc_unnormalised": auc(fractions, scores).mean().item(),
                           "curve": (scores.mean(0) / norm).tolist()}
        for method in ctx.methods:
            out[method]["random_auc"] = out["random"]["auc"]
            out[method]["auc_minus_random"] = out[method]["auc"] - out["random"]["auc"]
        return {self.mode: {"fractions": fractions, "order": order, "baseline": baseline,
                            "clean_probability": norm.item(), "normalised": "divided by clean_probability",
                            "methods": out}}


class Deletion(_Perturbation):
    name, mode = "deletion", "deletion"


class Insertion(_Perturbation):
    name, mode = "insertion", "insertion"


ROAR_EVALUATORS = {
    "cnn": "small CNN trained from scratch on the modified images (same architecture, schedule and seed "
           "for every model and method)",
    "probe": "linear probe (L-BFGS logistic regression) on the evaluated model's frozen image embeddings",
}


class ROAR(Metric):
    name, family = "roar", "faithfulness"
    citation = "Hooker, Erhan, Kindermans & Kim 2019, A Benchmark for Interpretability Methods in Deep Neural Networks"
    consumes = "pixel ranking of the " + RAW_MAP + "; a retrained evaluator (report: evaluator)"

    def evaluator_factory(self, ctx: EvalContext):
        """``cnn`` (default): :class:`SmallCNN` from scratch; ``probe``: :class:`LinearProbe` on ctx.encoder."""
        from .base import EvaluationError

        kind = self.options.get("evaluator", "cnn")
        device = ctx.class_weights.device
        if kind == "cnn":
            epochs = self.options.get("epochs", 8)
            return lambda: SmallCNN(epochs=epochs, seed=ctx.seed, device=device)
        if kind == "probe":
            def features(x):
                with torch.no_grad():
                    return ctx.encoder(x.to(device)).float()
            return lambda: LinearProbe(features, batch_size=ctx.batch_size)
        raise EvaluationError(f"unknown ROAR evaluator '{kind}' (choose from {', '.join(ROAR_EVALUATORS)})")

    def compute(self, ctx: EvalContext) -> dict:
        factory = self.evaluator_factory(ctx)
        n = ctx.images.shape[0]
        if n < 4 or len(set(ctx.labels.tolist())) < 2:
            return {"roar": {"skipped": "needs at least 4 images and 2 classes"}}
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed))
        train, test = order[: n // 2], order[n // 2:]
        maps = {m: ctx.maps(m) for m in ctx.methods}
        result = roar(ctx.images[train], ctx.labels[train], ctx.images[test], ctx.labels[test],
                      {m: v[train] for m, v in maps.items()}, {m: v[test] for m, v in maps.items()},
                      self.options.get("fractions", DEFAULT_ROAR_FRACTIONS), factory, seed=ctx.seed,
                      progress=ctx.progress)
        kind = self.options.get("evaluator", "cnn")
        result["evaluator"] = ROAR_EVALUATORS[kind]
        result["evaluator_kind"] = kind
        result["split"] = {"train": len(train), "test": len(test)}
        return {"roar": result}


def _n_empty(ctx: EvalContext) -> int:
    return int(empty_masks(ctx.masks).sum()) if ctx.masks is not None else 0


def default_tolerance(size: int) -> int:
    """The pointing game's 15 px at 224 px (Zhang et al.), scaled to the image size: 4 px at 64 px.

    A fixed 15 px would cover half of a small image, where every map "hits"."""
    return max(1, round(15 * size / 224))


class PointingGame(Metric):
    name, family, needs_masks = "pointing", "localisation", True
    citation = "Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop"
    consumes = RAW_MAP + "; tied maxima: an image scores the share of its maximal pixels inside the mask"

    def compute(self, ctx: EvalContext) -> dict:
        tol = self.options.get("tolerance")
        if tol is None:
            tol = default_tolerance(ctx.masks.shape[-1])
        out = {m: {"exact": _mean(pointing_game(ctx.maps(m), ctx.masks, 0)),
                   f"tolerance_{tol}px": _mean(pointing_game(ctx.maps(m), ctx.masks, tol))} for m in ctx.methods}
        return {"pointing_game": out, "n_empty_masks": _n_empty(ctx)}


class EnergyInMask(Metric):
    name, family, needs_masks = "energy", "localisation", True
    citation = "Wang et al. 2020, Score-CAM (energy-based pointing game)"
    consumes = "positive part of the " + RAW_MAP

    def compute(self, ctx: EvalContext) -> dict:
        out = {}
        for m in ctx.methods:
            share, chance = energy_in_mask(ctx.maps(m), ctx.masks)
            out[m] = {"energy": _mean(share), "chance": _mean(chance)}
        return {"energy_in_mask": out, "n_empty_masks": _n_empty(ctx)}


class Sparseness(Metric):
    name, family = "sparseness", "complexity"
    citation = "Chalasani et al. 2020, Concise Explanations of Neural Networks using Adversarial Training (Gini)"
    consumes = "|.| of the " + RAW_MAP

    def compute(self, ctx: EvalContext) -> dict:
        return {"gini": {m: gini(ctx.maps(m)).mean().item() for m in ctx.methods}}


class Randomisation(Metric):
    name, family = "randomisation", "sanity"
    citation = "Adebayo et al. 2018, Sanity Checks for Saliency Maps"
    consumes = "Spearman rank correlation of the " + RAW_MAP + " with the maps of a randomised model"

    def compute(self, ctx: EvalContext) -> dict:
        k = min(self.options.get("max_images", 8), ctx.images.shape[0])
        images, targets = ctx.images[:k], ctx.targets(ctx.labels[:k])
        out = {}
        for m in ctx.methods:
            res = randomisation_check(ctx.encoder, lambda enc: ctx.explainer(m, enc).attribute(images, targets), ctx.seed)
            out[m] = res["spearman_mean"]
        return {"randomisation_spearman": out}


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (
    ZeroShotAccuracy, RobustAccuracy, Deletion, Insertion, ROAR, PointingGame, EnergyInMask, Sparseness, Randomisation)}
ALIASES = {"gini": "sparseness", "complexity": "sparseness", "sanity": "randomisation", "accuracy": "zeroshot",
           "localisation": "pointing"}


def finite(value):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
