"""The registered metrics: each wraps a function of the family modules behind :class:`Metric`.

Names accepted by ``aft-hf evaluate --metrics``: zeroshot, robust, deletion, insertion, roar,
pointing, energy, gini (alias sparseness), randomisation. Each metric's options are a typed
dataclass (``Metric.Options``); each returns a :class:`~aft_hf.evaluate.schema.MetricResult`, and
its ``present`` turns its flat report entries into that schema (also for older reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import RAW_MAP, EvalContext, Metric
from .complexity import gini
from .evaluators import SmallCNN
from .faithfulness import (
    DEFAULT_ROAR_FRACTIONS, RISE_BASELINES, LinearProbe, auc, normalised_auc, perturbation_curve, roar,
)
from .localisation import empty_masks, energy_in_mask, pointing_game
from .sanity import randomisation_check
from .apgd import attack_description
from .schema import Curve, MetricResult, Scalar, finite  # noqa: F401  (finite: re-exported, its old home)
from .stats import nanmean as _mean
from .zeroshot import ATTACKS, DEFAULT_ITERATIONS, predict, robust_accuracy, topk_accuracy


def _robust_name(attack: dict) -> Optional[str]:
    """``APGD-CE+APGD-T, L-inf`` from ``robust_attack``; reports without a name were made with PGD."""
    if not isinstance(attack, dict) or not attack:
        return None
    if attack.get("name"):
        return str(attack["name"])
    norm = "L-inf" if attack.get("norm", "linf") == "linf" else str(attack.get("norm"))
    return f"PGD-{attack['steps']}, {norm}" if attack.get("steps") else f"PGD, {norm}"


ZS_TASK = "Zero-shot classification"


class ZeroShotAccuracy(Metric):
    name, family = "zeroshot", "accuracy"
    citation = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"
    keys = ("zeroshot_top1", "zeroshot_top5")

    def compute(self, ctx: EvalContext) -> MetricResult:
        logits = predict(ctx.classifier, ctx.images, ctx.batch_size, ctx.progress)
        acc = topk_accuracy(logits, ctx.labels, (1, 5))
        correct = (logits.argmax(1) == ctx.labels).float()
        return self.result({"zeroshot_top1": acc["top1"], "zeroshot_top5": acc["top5"]}, {"": {"correct": correct}})

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        scalars = [Scalar(f"Zero-shot top-{k} accuracy", data.get(f"zeroshot_top{k}"), better="higher", percent=True,
                          hub_metric="accuracy" if k == 1 else "top_5_accuracy", task=ZS_TASK)
                   for k in (1, 5) if f"zeroshot_top{k}" in data]
        notes = ["Top-5 is n/a with fewer than 5 classes."] if "zeroshot_top5" in data and \
            data["zeroshot_top5"] is None else []
        return MetricResult(cls.name, cls.family, scalars, notes=notes)


@dataclass(frozen=True)
class RobustOptions:
    eps: Sequence[float] = (1, 2, 4)
    """Budgets in 1/255 units."""
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

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack '{self.attack}' (choose from {', '.join(ATTACKS)})")


class RobustAccuracy(Metric):
    name, family = "robust", "accuracy"
    citation = ("Croce & Hein 2020 (APGD-CE, APGD-T; AutoAttack) or Madry et al. 2018 (PGD); protocol of "
                "Schlarmann et al. 2024, Robust CLIP (FARE): attacks on the zero-shot logits, worst case per image")
    keys = ("robust_top1", "robust_attack")
    Options = RobustOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        o = self.options
        steps = o.steps or DEFAULT_ITERATIONS[o.attack]
        acc = robust_accuracy(ctx.classifier, ctx.images, ctx.labels, o.eps, steps, o.alpha,
                              ctx.batch_size, ctx.seed, ctx.progress, o.attack, o.restarts, o.targets)
        setup = {"attack": o.attack, "name": attack_description(o.attack, "linf", steps), "norm": "linf",
                 "steps": steps}
        if o.attack == "apgd":
            setup.update(restarts=o.restarts, targets=min(o.targets, ctx.class_weights.shape[0] - 1))
        return self.result({"robust_top1": acc, "robust_attack": {**setup, "eps": [f"{e:g}/255" for e in o.eps]}})

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        attack = data.get("robust_attack") or {}
        name = _robust_name(attack)
        quantity = "Robust zero-shot top-1 accuracy" + (f" ({name})" if name else "")
        scalars = [Scalar(quantity, v, str(e), "eps", better="higher", percent=True, hub_metric="robust_accuracy",
                          task="Adversarial robustness") for e, v in (data.get("robust_top1") or {}).items()]
        notes = []
        if attack:
            extra = f", {attack['restarts']} restart(s), {attack['targets']} target classes" if "targets" in attack \
                else ""
            notes.append(f"Attack: {attack.get('name', 'PGD, L-inf')}, {attack.get('steps')} iterations{extra}; an "
                         "image counts as robust only when correct clean and every attack fails, at this and every "
                         "smaller budget.")
        return MetricResult(cls.name, cls.family, scalars, metadata=dict(attack), notes=notes,
                            setup_title="robust accuracy under")


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

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        d, mode = data[cls.mode], cls.mode
        methods = d.get("methods") or {}
        better = "lower" if mode == "deletion" else "higher"
        prob = d.get("clean_probability")
        row = (f"{mode} AUC ({better} better), / clean prob. {'n/a' if prob is None else f'{prob:.3f}'}, "
               f"baseline {d.get('baseline', 'mean')}")
        scalars = [Scalar(f"{mode.capitalize()} AUC", v.get("auc"), m, "method", m, row, better,
                          baseline=m == "random") for m, v in methods.items() if isinstance(v, dict)]
        ahead = "negative" if mode == "deletion" else "positive"
        scalars += [Scalar(f"{mode.capitalize()} AUC minus random", v["auc_minus_random"], m, "method", m,
                           f"{mode} AUC minus random ({ahead} = better than random)", better)
                    for m, v in methods.items() if isinstance(v, dict) and "auc_minus_random" in v]
        curves = []
        if d.get("fractions") and all(isinstance(v, dict) and "curve" in v for v in methods.values()):
            order = d.get("order")
            first = {"most": ", most relevant first", "least": ", least relevant first"}.get(order, "")
            curves.append(Curve(
                mode, f"{mode} ({better} AUC = better)", list(d["fractions"]),
                {m: v["curve"] for m, v in methods.items()},
                f"pixels {'removed' if mode == 'deletion' else 'inserted'} (%){first}",
                "label probability / model's clean probability" if prob is not None
                else "zero-shot probability of the label", "deletion_insertion",
                labels={m: f"AUC {v['auc']:.3f}" for m, v in methods.items() if isinstance(v.get("auc"), float)}))
        metadata = {k: d[k] for k in ("order", "baseline", "clean_probability") if k in d}
        return MetricResult(cls.name, cls.family, scalars, curves, metadata)


class Deletion(_Perturbation):
    name, mode, keys = "deletion", "deletion", ("deletion",)


class Insertion(_Perturbation):
    name, mode, keys = "insertion", "insertion", ("insertion",)


ROAR_EVALUATORS = {
    "cnn": "small CNN trained from scratch on the modified images (same architecture, schedule and seed "
           "for every model and method)",
    "probe": "linear probe (L-BFGS logistic regression) on the evaluated model's frozen image embeddings",
}


@dataclass(frozen=True)
class RoarOptions:
    fractions: Sequence[float] = DEFAULT_ROAR_FRACTIONS
    """Fractions of the pixels removed (each strictly between 0 and 1)."""
    evaluator: str = "cnn"
    """``cnn`` (a small CNN from scratch) or ``probe`` (a linear probe on the model's embeddings)."""
    epochs: int = 8
    """Training epochs of the CNN evaluator."""

    def __post_init__(self):
        if self.evaluator not in ROAR_EVALUATORS:
            raise ValueError(f"unknown ROAR evaluator '{self.evaluator}' (choose from {', '.join(ROAR_EVALUATORS)})")


class ROAR(Metric):
    name, family = "roar", "faithfulness"
    citation = "Hooker, Erhan, Kindermans & Kim 2019, A Benchmark for Interpretability Methods in Deep Neural Networks"
    consumes = "pixel ranking of the " + RAW_MAP + "; a retrained evaluator (report: evaluator)"
    keys = ("roar",)
    Options = RoarOptions

    def evaluator_factory(self, ctx: EvalContext):
        """``cnn`` (default): :class:`SmallCNN` from scratch; ``probe``: :class:`LinearProbe` on ctx.encoder."""
        device = ctx.class_weights.device
        if self.options.evaluator == "cnn":
            epochs = self.options.epochs
            return lambda: SmallCNN(epochs=epochs, seed=ctx.seed, device=device)

        def features(x):
            with torch.no_grad():
                return ctx.encoder(x.to(device)).float()
        return lambda: LinearProbe(features, batch_size=ctx.batch_size)

    def compute(self, ctx: EvalContext) -> MetricResult:
        factory = self.evaluator_factory(ctx)
        n = ctx.images.shape[0]
        if n < 4 or len(set(ctx.labels.tolist())) < 2:
            return self.result({"roar": {"skipped": "needs at least 4 images and 2 classes"}})
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed))
        train, test = order[: n // 2], order[n // 2:]
        maps = {m: ctx.maps(m) for m in ctx.methods}
        result = roar(ctx.images[train], ctx.labels[train], ctx.images[test], ctx.labels[test],
                      {m: v[train] for m, v in maps.items()}, {m: v[test] for m, v in maps.items()},
                      self.options.fractions, factory, seed=ctx.seed, progress=ctx.progress)
        kind = self.options.evaluator
        result["evaluator"] = ROAR_EVALUATORS[kind]
        result["evaluator_kind"] = kind
        result["split"] = {"train": len(train), "test": len(test)}
        return self.result({"roar": result})

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        r = data["roar"]
        if "accuracy" not in r:
            return MetricResult(cls.name, cls.family, notes=[f"ROAR skipped: {r.get('skipped', 'no result')}."])
        fractions = list(r.get("fractions") or [])
        scalars = [Scalar("ROAR accuracy (evaluator retrained)", a, f"{m} @ {f:g}", "method @ fraction removed", m,
                          f"ROAR accuracy, {100 * f:.0f}% removed", "lower", True, baseline=m == "random")
                   for m, curve in r["accuracy"].items() for f, a in zip(fractions, curve or [])]
        evaluator = str(r.get("evaluator", ""))
        kind = "CNN" if "CNN" in evaluator else "linear probe" if "probe" in evaluator else "evaluator"
        curves = [Curve("roar", "ROAR (lower = more faithful)", fractions, dict(r["accuracy"]),
                        "pixels removed and retrained (%)", f"test accuracy (retrained {kind})", "roar")]
        split = r.get("split") or {}
        metadata = {"evaluator": evaluator, **{f"{k}_images": v for k, v in split.items()}}
        notes = [f"ROAR evaluator: {evaluator}; train/test {split.get('train')}/{split.get('test')}."]
        return MetricResult(cls.name, cls.family, scalars, curves, metadata, notes)


def _n_empty(ctx: EvalContext) -> int:
    return int(empty_masks(ctx.masks).sum()) if ctx.masks is not None else 0


def _empty_note(data: dict) -> list[str]:
    n = data.get("n_empty_masks")
    return [] if n is None else [f"Localisation skips images whose mask is empty: {n} here."]


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
    citation = "Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop"
    consumes = RAW_MAP + "; tied maxima: an image scores the share of its maximal pixels inside the mask"
    keys = ("pointing_game", "n_empty_masks")
    Options = PointingOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        tol = self.options.tolerance
        if tol is None:
            tol = default_tolerance(ctx.masks.shape[-1])
        per_image = {m: {"exact": pointing_game(ctx.maps(m), ctx.masks, 0),
                         f"tolerance_{tol}px": pointing_game(ctx.maps(m), ctx.masks, tol)} for m in ctx.methods}
        out = {m: {k: _mean(v) for k, v in d.items()} for m, d in per_image.items()}
        return self.result({"pointing_game": out, "n_empty_masks": _n_empty(ctx)}, per_image)

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        scalars = [Scalar("Pointing game", v, f"{m}, {k}", "method", m, f"pointing game {k}", "higher", True)
                   for m, d in data["pointing_game"].items() for k, v in d.items()]
        return MetricResult(cls.name, cls.family, scalars, notes=_empty_note(data),
                            metadata={k: data[k] for k in ("n_empty_masks",) if k in data})


class EnergyInMask(Metric):
    name, family, needs_masks = "energy", "localisation", True
    citation = "Wang et al. 2020, Score-CAM (energy-based pointing game)"
    consumes = "positive part of the " + RAW_MAP
    keys = ("energy_in_mask", "n_empty_masks")

    def compute(self, ctx: EvalContext) -> MetricResult:
        out, per_image = {}, {}
        for m in ctx.methods:
            share, chance = energy_in_mask(ctx.maps(m), ctx.masks)
            per_image[m] = {"energy": share, "chance": chance}
            out[m] = {"energy": _mean(share), "chance": _mean(chance)}
        return self.result({"energy_in_mask": out, "n_empty_masks": _n_empty(ctx)}, per_image)

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        e = data["energy_in_mask"]
        scalars = [Scalar("Energy in mask", d.get("energy"), f"{m}, energy", "method", m, "energy in mask",
                          percent=True) for m, d in e.items()]
        chance = next((d["chance"] for d in e.values() if "chance" in d), None)  # the mask's area: one per image set
        if chance is not None:
            scalars.append(Scalar("Energy in mask", chance, "chance", "method", "chance", "energy in mask",
                                  percent=True, baseline=True))
        return MetricResult(cls.name, cls.family, scalars, notes=_empty_note(data),
                            metadata={k: data[k] for k in ("n_empty_masks",) if k in data})


class Gini(Metric):
    name, family = "gini", "complexity"
    citation = "Chalasani et al. 2020, Concise Explanations of Neural Networks using Adversarial Training (Gini)"
    consumes = "|.| of the " + RAW_MAP
    keys = ("gini",)

    def compute(self, ctx: EvalContext) -> MetricResult:
        per_image = {m: {"gini": gini(ctx.maps(m))} for m in ctx.methods}
        return self.result({"gini": {m: v["gini"].mean().item() for m, v in per_image.items()}}, per_image)

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        return MetricResult(cls.name, cls.family, [
            Scalar("Gini sparseness of saliency", v, m, "method", m, "Gini sparseness (higher = sparser)")
            for m, v in data["gini"].items()])


@dataclass(frozen=True)
class RandomisationOptions:
    max_images: int = 8
    """Images whose maps are compared (the check re-explains them with a randomised model)."""


class Randomisation(Metric):
    name, family = "randomisation", "sanity"
    citation = "Adebayo et al. 2018, Sanity Checks for Saliency Maps"
    consumes = "Spearman rank correlation of the " + RAW_MAP + " with the maps of a randomised model"
    keys = ("randomisation_spearman",)
    Options = RandomisationOptions

    def compute(self, ctx: EvalContext) -> MetricResult:
        k = min(self.options.max_images, ctx.images.shape[0])
        images, targets = ctx.images[:k], ctx.targets(ctx.labels[:k])
        out = {}
        for m in ctx.methods:
            res = randomisation_check(ctx.encoder, lambda enc: ctx.explainer(m, enc).attribute(images, targets), ctx.seed)
            out[m] = res["spearman_mean"]
        return self.result({"randomisation_spearman": out})

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        return MetricResult(cls.name, cls.family, [
            Scalar("Spearman correlation after weight randomisation", v, m, "method", m,
                   "Spearman vs randomised model (lower better)", "lower")
            for m, v in data["randomisation_spearman"].items()])


METRICS: dict[str, type[Metric]] = {cls.name: cls for cls in (
    ZeroShotAccuracy, RobustAccuracy, Deletion, Insertion, ROAR, PointingGame, EnergyInMask, Gini, Randomisation)}
"""The registry: ``--metrics`` names -> classes. A metric's name is also its key in ``report.json``'s ``results``."""
ALIASES = {"sparseness": "gini", "complexity": "gini", "sanity": "randomisation", "accuracy": "zeroshot",
           "localisation": "pointing"}
