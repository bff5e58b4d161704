"""The dose-response study's Markdown tables and figure, read from study.json's numbers only."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..explain import method_label  # noqa: E402
from .report import METRIC_LABELS  # noqa: E402


def _pm(v: dict, digits: int = 3) -> str:
    m, se = v.get("mean"), v.get("se")
    if m is None or m != m:
        return "n/a"
    return f"{m:.{digits}f} ± {se:.{digits}f}" if se is not None and se == se else f"{m:.{digits}f}"


def _f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def images_se(part: dict) -> float:
    """The per-image standard error of a paired difference, as a root mean square over seeds.

    The seeds share the held-out images, so the spread over seeds says nothing about which images were
    drawn; this is that second source of uncertainty (usually the larger one)."""
    ses = [d.get("se") for d in part.get("per_seed_paired", []) if d.get("se") == d.get("se")]
    return math.sqrt(sum(x * x for x in ses) / len(ses)) if ses else float("nan")


def binomial_se(p, n: int) -> float:
    """The per-image standard error of an accuracy p over n images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if p is not None and p == p and n else float("nan")


def _one_seed(summary: dict) -> bool:
    """A single seed's stored SE already is the per-image one."""
    return summary.get("per_seed") is not None and len(summary["per_seed"]) < 2


def _finite_or_zero(x) -> float:
    return x if x is not None and x == x else 0.0


def combined_se(summary: dict, image_se: float) -> float:
    """sqrt(SE over seeds^2 + per-image SE^2): the error bar of the figure (both sources of uncertainty)."""
    seeds = 0.0 if _one_seed(summary) else _finite_or_zero(summary.get("se"))
    return math.sqrt(seeds ** 2 + _finite_or_zero(image_se) ** 2)


def _pmi(summary: dict, image_se: float) -> str:
    """mean ± SE over seeds [per-image SE]."""
    text = _pm(summary)
    return text if text == "n/a" or _one_seed(summary) or image_se != image_se else f"{text} [{image_se:.3f}]"


def study_markdown(study: dict) -> str:
    """Tables: objective and accuracy per (norm, eps); then per method the paired saliency deltas."""
    s, orig = study["settings"], study["original"]
    lines = ["# aft_hf dose-response study: AFT budget vs the objective, robustness and saliency", "",
             f"{s['eval_images']} held-out images, {s['seeds']} seed(s) per cell, {s['steps']} AFT steps per run "
             f"(`world_aft.yaml`; huber: eps2 = eps). Robust accuracy: {s['robust_attack_name']}"
             + (f" ({s['robust_steps']} iterations, {s['robust_targets']} targets)"
                if s["robust_attack"] == "apgd" else "")
             + ". Values: mean over seeds ± standard error over seeds (per-image SE for one seed); in brackets "
             "the per-image standard error (the uncertainty from the choice of held-out images, which the "
             "seeds share; root mean square over seeds). Δ: per-image paired difference vs the original. "
             f"Original: clean accuracy {_f(orig['accuracy']['clean'])}, robust "
             + ", ".join(f"{k} {_f(v)}" for k, v in orig["accuracy"]["robust"].items())
             + f"; energy-in-mask chance {_f(orig['chance_energy'])}.", "",
             "| norm | eps | objective original | objective AFT | Δ objective ↓ | clean acc | robust acc at eps "
             "(original → AFT) |", "|---|---|---|---|---|---|---|"]
    n = s["eval_images"]
    for norm, cells in study["results"].items():
        for eps, c in cells.items():
            at = c["accuracy"].get("at_trained") or {}
            clean = c["accuracy"]["clean"]
            lines.append(f"| {norm} | {eps}/255 | {_f(c['objective']['original'])} "
                         f"| {_pm(c['objective']['adversarial'])} "
                         f"| {_pmi(c['objective']['delta'], images_se(c['objective']))} "
                         f"| {_pmi(clean, binomial_se(clean.get('mean'), n))} | "
                         f"{_f(orig['accuracy']['robust'].get(f'{eps}/255'))} → "
                         f"{_pmi(at, binomial_se(at.get('mean'), n))} |")
    for method, base in orig["metrics"].items():
        metrics = list(base)
        lines += ["", f"**{method_label(method)}** (original: "
                  + ", ".join(f"{METRIC_LABELS[k]} {_f(base[k])}" for k in metrics) + ")", "",
                  "| norm | eps | " + " | ".join(f"Δ {METRIC_LABELS[k]}" for k in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for norm, cells in study["results"].items():
            for eps, c in cells.items():
                lines.append(f"| {norm} | {eps}/255 | "
                             + " | ".join(_pmi(c["metrics"][method][k]["delta"], images_se(c["metrics"][method][k]))
                                          for k in metrics) + " |")
    lines += ["", f"Wall time: {study['wall_time_s']:.0f} s. Files: `study.json` (every number, per seed), "
              "`dose_response.png`."]
    return "\n".join(lines) + "\n"


def _panels(study: dict) -> list[tuple[str, callable]]:
    """Each panel's title and getter: cell -> (summary, per-image SE)."""
    method = next(iter(study["original"]["metrics"]))
    label = method_label(method)
    n = study["settings"]["eval_images"]

    def sal(metric):
        return lambda c: (c["metrics"][method][metric]["delta"], images_se(c["metrics"][method][metric]))

    def accuracy(get):
        return lambda c: (get(c), binomial_se(get(c).get("mean"), n))

    return [("AFT objective: adversarial distance ↓",
             lambda c: (c["objective"]["adversarial"], images_se(c["objective"]))),
            ("robust accuracy at the trained eps", accuracy(lambda c: c["accuracy"].get("at_trained") or {})),
            ("clean accuracy", accuracy(lambda c: c["accuracy"]["clean"])),
            (f"{label}: Δ energy in mask", sal("energy")), (f"{label}: Δ Gini", sal("gini")),
            (f"{label}: Δ pointing (tolerant)", sal("pointing_tol"))]


def _original_curve(study: dict, title: str, cells: dict) -> list[float]:
    orig = study["original"]
    if title.startswith("AFT objective"):
        return [c["objective"]["original"] for c in cells.values()]
    if title.startswith("robust"):
        return [orig["accuracy"]["robust"].get(f"{e}/255", float("nan")) for e in cells]
    if title.startswith("clean"):
        return [orig["accuracy"]["clean"]] * len(cells)
    return [0.0] * len(cells)  # the saliency panels show paired differences vs the original


def dose_response_figure(study: dict, out: Path) -> Path:
    """Metric vs trained eps (log axis), one line per norm with standard-error bars (seeds and images
    combined, :func:`combined_se`); dashed: the original (the saliency panels: per-image paired difference
    vs the original, so the original is 0)."""
    panels = _panels(study)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, get) in zip(axes.flat, panels):
        for i, (norm, cells) in enumerate(study["results"].items()):
            xs = [float(e) for e in cells]
            vals = [get(c) for c in cells.values()]
            ys = [v.get("mean", float("nan")) for v, _ in vals]
            es = [combined_se(v, image_se) for v, image_se in vals]
            line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"AFT {norm}")
            ax.plot(xs, _original_curve(study, title, cells), ls="--", color=line[0].get_color(), alpha=0.6,
                    label=f"original ({norm} attack)" if title.startswith("AFT objective") else
                    ("original" if i == 0 else None))
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("trained eps (1/255; huber: eps = eps2)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("error bars: standard error over seeds and over held-out images combined", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
