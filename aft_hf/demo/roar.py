"""``aft-hf demo --roar``: ROAR in the world, the original world CLIP against each AFT fine-tune.

ROAR (remove and retrain, :func:`aft_hf.evaluate.roar`) retrains an evaluator on images whose most
relevant pixels (by each model's saliency map) are replaced by the mean colour, and asks how far its
held-out accuracy falls: lower = the map found what a classifier needs. The evaluator (a small CNN
from scratch, :class:`aft_hf.evaluate.SmallCNN`) must read *intact* images well first, or every curve
starts low and its drops are noise; the world renders as many training images as it needs
(``train_images``, world seed ``train_seed``; 3000 images and 4 epochs reach about 0.95) and a test
set of its own (``test_images``, seed ``test_seed``), both apart from AFT's training images and the
demo's held-out set. Below the floor (0.8) the section is flagged and no curve is drawn.

One :func:`~aft_hf.evaluate.roar` call holds every model's maps, so the intact evaluators and the
random ranking (both independent of the model) are trained once and shared. Each point is retrained
``repeats`` times with different seeds on the same modified images. Spread: the sample sd over the
curves of a variant (evaluator seeds x AFT seeds). The AFT and original curves *separate* at a
fraction when their difference exceeds twice its standard error, which combines the spread of both
(sd / sqrt(curves)) with the per-image binomial SE of each accuracy on the test images; the same is
reported for the mean over the removal fractions (one number per curve; its binomial SE counts the
fractions x test images as trials, which ignores that the fractions share the images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..evaluate import CNNOptions, EvalContext, RoarOptions, SmallCNN, roar
from ..evaluate.faithfulness import roar_flag
from ..explain import method_label
from ..results import roar_evaluator_text


def _demo_roar_options() -> RoarOptions:
    return RoarOptions(fractions=(0.1, 0.3, 0.5), cnn=CNNOptions(epochs=4), repeats=2)


@dataclass(frozen=True)
class WorldRoar:
    """What ``--roar`` runs. Defaults sized for ~10 minutes of ROAR on one shared CPU core: the fractions
    10/30/50% bracket the target object (about 20% of the image), where faithful maps differ."""

    train_images: int = 3000
    test_images: int = 1000
    methods: tuple[str, ...] = ("saliency",)
    options: RoarOptions = field(default_factory=_demo_roar_options)
    train_seed: int = 3000
    test_seed: int = 3001

    def to_dict(self) -> dict:
        o = self.options
        return {"train_images": self.train_images, "test_images": self.test_images, "methods": list(self.methods),
                "train_seed": self.train_seed, "test_seed": self.test_seed, "fractions": list(o.fractions),
                "repeats": o.repeats, "floor": o.floor, "evaluator": "cnn", "cnn": o.cnn.to_dict()}


def _world_images(n: int, seed: int, world) -> tuple[torch.Tensor, torch.Tensor]:
    from ..world import generate_arrays

    a = generate_arrays(n, seed, world)
    return torch.from_numpy(a["images"]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(a["labels"]).long()


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _curve_stats(curves: list[list[float]]) -> dict:
    """Mean and sample sd per point, and the same for each curve's mean over the removal fractions."""
    n = len(curves)
    points = list(zip(*curves))
    mean = [sum(p) / n for p in points]
    sd = [math.sqrt(sum((v - m) ** 2 for v in p) / (n - 1)) if n > 1 else None for p, m in zip(points, mean)]
    areas = [sum(c[1:]) / (len(c) - 1) for c in curves]
    area = sum(areas) / n
    area_sd = math.sqrt(sum((a - area) ** 2 for a in areas) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "curves": n, "per_curve": curves,
            "removed_mean": {"mean": area, "sd": area_sd, "per_curve": areas}}


def _difference(a: dict, b: dict, pa: float, pb: float, n_test: int) -> dict:
    """a - b with its SE: spread of both (sd / sqrt(curves)) and each accuracy's per-image binomial SE."""
    spread = sum((s or 0.0) ** 2 / k for s, k in ((a["sd"], a["n"]), (b["sd"], b["n"])))
    images = _binomial_se(pa, n_test) ** 2 + _binomial_se(pb, n_test) ** 2
    se = math.sqrt(spread + images)
    delta = a["mean"] - b["mean"]
    return {"delta": delta, "se": se, "se_spread": math.sqrt(spread), "se_images": math.sqrt(images),
            "separate": abs(delta) > 2 * se}


def separation(curves: dict, variant: str, method: str, fractions: Sequence[float], n_test: int) -> dict:
    """AFT minus original at each removal fraction and for the mean over fractions (see the module docstring)."""
    a, o = curves[variant][method], curves["original"][method]
    points = [_difference({"mean": a["mean"][i], "sd": a["sd"][i], "n": a["curves"]},
                          {"mean": o["mean"][i], "sd": o["sd"][i], "n": o["curves"]},
                          a["mean"][i], o["mean"][i], n_test) | {"fraction": fractions[i]}
              for i in range(1, len(fractions))]
    ra, ro = a["removed_mean"], o["removed_mean"]
    overall = _difference({"mean": ra["mean"], "sd": ra["sd"], "n": a["curves"]},
                          {"mean": ro["mean"], "sd": ro["sd"], "n": o["curves"]},
                          ra["mean"], ro["mean"], n_test * (len(fractions) - 1))
    return {"variant": variant, "method": method, "points": points, "removed_mean": overall}


def world_roar(settings: WorldRoar, world, class_weights: torch.Tensor, logit_scale: float,
               models: dict[str, list[torch.nn.Module]], seed: int = 0, progress: bool = True) -> dict:
    """ROAR of every model's maps on fresh world images; ``models`` = {"original": [model], variant: [per seed]}.

    Returns the JSON section: settings, the evaluator's intact accuracy and floor, per variant and method
    the mean/sd curves (the random ranking under ``"random"``), the separation of each AFT variant from the
    original, and the raw :func:`roar` result.
    """
    o = settings.options
    xtr, ytr = _world_images(settings.train_images, settings.train_seed, world)
    xte, yte = _world_images(settings.test_images, settings.test_seed, world)
    train_maps, test_maps, owner = {}, {}, {}
    for variant, encoders in models.items():
        for k, encoder in enumerate(encoders):
            encoder.eval()
            ctx = EvalContext(encoder, class_weights, xtr, ytr, list(settings.methods), logit_scale,
                              batch_size=64, seed=seed, progress=progress)
            for method in settings.methods:
                key = f"{variant}/seed{k}/{method}"
                train_maps[key], test_maps[key] = ctx.maps(method), ctx.maps(method, xte, yte)
                owner[key] = (variant, method)
    raw = roar(xtr, ytr, xte, yte, train_maps, test_maps, o.fractions,
               lambda s: SmallCNN(o.cnn, seed=s), seed=seed, progress=progress, repeats=o.repeats, floor=o.floor)
    section = {"settings": settings.to_dict(), "intact_accuracy": raw["intact_accuracy"],
               "intact_accuracy_per_seed": raw["intact_accuracy_per_seed"], "floor": raw["floor"],
               "below_floor": raw["below_floor"], "fractions": raw["fractions"], "raw": raw}
    flag = roar_flag(raw)
    if flag:
        section["skipped"] = flag
        return section
    grouped: dict = {}
    for key, curves in raw["per_seed"].items():
        variant, method = owner.get(key, ("random", "random"))
        grouped.setdefault(variant, {}).setdefault(method, []).extend(curves)
    curves = {v: {m: _curve_stats(c) for m, c in ms.items()} for v, ms in grouped.items()}
    section["curves"] = curves
    section["separation"] = [separation(curves, v, m, raw["fractions"], settings.test_images)
                             for v in models if v != "original" for m in settings.methods]
    return section


def roar_verdicts(section: dict, label: Callable[[str], str] = str) -> list[str]:
    """One sentence per AFT variant and method, derived from the numbers; or the flag."""
    if "skipped" in section:
        return [f"ROAR: not a result ({section['skipped']})."]
    lines = []
    for s in section["separation"]:
        r = s["removed_mean"]
        apart = [p for p in s["points"] if p["separate"]]
        where = (", ".join(f"{100 * p['fraction']:.0f}%" for p in apart) if apart else "no fraction")
        lines.append(
            f"ROAR, {method_label(s['method'])}, {label(s['variant'])} vs original: mean accuracy over the removal "
            f"fractions {r['delta']:+.3f} (SE {r['se']:.3f}: {'beyond' if r['separate'] else 'not beyond'} 2 SE); "
            f"the curves separate beyond 2 SE at {where}; {roar_evaluator_text(section['raw'])}.")
    return lines


def roar_markdown(section: dict, label: Callable[[str], str] = str) -> list[str]:
    """The demo report's ROAR section: settings, intact accuracy, the curves (mean ± sd) and the separation."""
    s = section["settings"]
    lines = ["", "**ROAR (remove and retrain)** on fresh world images: evaluator "
             f"{s['train_images']} train / {s['test_images']} test images (world seeds {s['train_seed']}/"
             f"{s['test_seed']}), CNN {s['cnn']['widths']} for {s['cnn']['epochs']} epochs, {s['repeats']} "
             f"evaluator seed(s) per point; {roar_evaluator_text(section['raw'])}.", ""]
    if "skipped" in section:
        return lines + [f"**Not a result:** {section['skipped']}.", ""]
    fr = section["fractions"]
    lines += ["| model | method | " + " | ".join(f"{100 * f:.0f}%" for f in fr) + " | mean over removals ↓ |",
              "|---|---|" + "---|" * (len(fr) + 1)]

    def cell(m, sd):
        return f"{m:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    for variant, methods in section["curves"].items():
        for method, c in methods.items():
            name = "random ranking" if variant == "random" else label(variant)
            lines.append(f"| {name} | {method_label(method) if variant != 'random' else ''} | "
                         + " | ".join(cell(m, sd) for m, sd in zip(c["mean"], c["sd"]))
                         + f" | {cell(c['removed_mean']['mean'], c['removed_mean']['sd'])} |")
    lines += ["", "Mean ± sd over curves (evaluator seeds x fine-tune seeds). AFT − original (SE: spread of both "
              "and per-image binomial SE of the test accuracy):", "",
              "| model | method | " + " | ".join(f"Δ {100 * f:.0f}%" for f in fr[1:]) + " | Δ mean over removals |",
              "|---|---|" + "---|" * len(fr)]
    for s in section["separation"]:
        cells = [f"{p['delta']:+.3f} ± {p['se']:.3f}" + (" *" if p["separate"] else "") for p in s["points"]]
        r = s["removed_mean"]
        cells.append(f"{r['delta']:+.3f} ± {r['se']:.3f}" + (" *" if r["separate"] else ""))
        lines.append(f"| {label(s['variant'])} | {method_label(s['method'])} | " + " | ".join(cells) + " |")
    return lines + ["", "\\* beyond 2 SE.", ""]


def roar_figure(section: dict, out: Path, label: Callable[[str], str] = str) -> Path:
    """Accuracy vs % removed: mean ± sd per variant, random dashed; the evaluator's intact accuracy in the title.
    Below the floor: an empty panel that says so, no curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    if "skipped" in section:
        ax.text(0.5, 0.5, "ROAR: not a result\n" + section["skipped"], ha="center", va="center", wrap=True,
                fontsize=8, color="firebrick", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = [100 * f for f in section["fractions"]]
        for variant, methods in section["curves"].items():
            for method, c in methods.items():
                name = "random ranking" if variant == "random" else f"{label(variant)} / {method_label(method)}"
                ax.errorbar(x, c["mean"], yerr=[e or 0.0 for e in c["sd"]], fmt="--" if variant == "random" else "-",
                            marker="o", ms=3, capsize=3, label=name)
        ax.set_xlabel("pixels removed and retrained (%)")
        ax.set_ylabel("held-out accuracy of the retrained CNN")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax.set_title(f"ROAR in the world (lower = more faithful)\n{roar_evaluator_text(section['raw'])}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
