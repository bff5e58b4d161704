"""The dose-response study's Markdown tables and figure, read from study.json's numbers only."""

from __future__ import annotations

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


def study_markdown(study: dict) -> str:
    """Tables: objective and accuracy per (norm, eps); then per method the paired saliency deltas."""
    s, orig = study["settings"], study["original"]
    lines = ["# aft_hf dose-response study: AFT budget vs the objective, robustness and saliency", "",
             f"{s['eval_images']} held-out images, {s['seeds']} seed(s) per cell, {s['steps']} AFT steps per run "
             f"(`world_aft.yaml`; huber: eps2 = eps). Robust accuracy: {s['robust_attack_name']}"
             + (f" ({s['robust_steps']} iterations, {s['robust_targets']} targets)"
                if s["robust_attack"] == "apgd" else "")
             + ". Values: mean over seeds ± standard error (over seeds; per-image SE for one seed). "
             "Δ: per-image paired difference vs the original. "
             f"Original: clean accuracy {_f(orig['accuracy']['clean'])}, robust "
             + ", ".join(f"{k} {_f(v)}" for k, v in orig["accuracy"]["robust"].items())
             + f"; energy-in-mask chance {_f(orig['chance_energy'])}.", "",
             "| norm | eps | objective original | objective AFT | Δ objective ↓ | clean acc | robust acc at eps "
             "(original → AFT) |", "|---|---|---|---|---|---|---|"]
    for norm, cells in study["results"].items():
        for eps, c in cells.items():
            at = c["accuracy"].get("at_trained") or {}
            lines.append(f"| {norm} | {eps}/255 | {_f(c['objective']['original'])} "
                         f"| {_pm(c['objective']['adversarial'])} "
                         f"| {_pm(c['objective']['delta'])} | {_pm(c['accuracy']['clean'])} | "
                         f"{_f(orig['accuracy']['robust'].get(f'{eps}/255'))} → {_pm(at)} |")
    for method, base in orig["metrics"].items():
        metrics = list(base)
        lines += ["", f"**{method_label(method)}** (original: "
                  + ", ".join(f"{METRIC_LABELS[k]} {_f(base[k])}" for k in metrics) + ")", "",
                  "| norm | eps | " + " | ".join(f"Δ {METRIC_LABELS[k]}" for k in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for norm, cells in study["results"].items():
            for eps, c in cells.items():
                lines.append(f"| {norm} | {eps}/255 | "
                             + " | ".join(_pm(c["metrics"][method][k]["delta"]) for k in metrics) + " |")
    lines += ["", f"Wall time: {study['wall_time_s']:.0f} s. Files: `study.json` (every number, per seed), "
              "`dose_response.png`."]
    return "\n".join(lines) + "\n"


def _panels(study: dict) -> list[tuple[str, callable]]:
    method = next(iter(study["original"]["metrics"]))
    label = method_label(method)

    def sal(metric):
        return lambda c: c["metrics"][method][metric]["delta"]

    return [("AFT objective: adversarial distance ↓", lambda c: c["objective"]["adversarial"]),
            ("robust accuracy at the trained eps", lambda c: c["accuracy"].get("at_trained") or {}),
            ("clean accuracy", lambda c: c["accuracy"]["clean"]),
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
    """Metric vs trained eps (log axis), one line per norm with standard-error bars; dashed: the original
    (the saliency panels: per-image paired difference vs the original, so the original is 0)."""
    panels = _panels(study)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, get) in zip(axes.flat, panels):
        for i, (norm, cells) in enumerate(study["results"].items()):
            xs = [float(e) for e in cells]
            vals = [get(c) for c in cells.values()]
            ys = [v.get("mean", float("nan")) for v in vals]
            es = [v.get("se", 0.0) if v.get("se") == v.get("se") else 0.0 for v in vals]
            line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"AFT {norm}")
            ax.plot(xs, _original_curve(study, title, cells), ls="--", color=line[0].get_color(), alpha=0.6,
                    label=f"original ({norm} attack)" if title.startswith("AFT objective") else
                    ("original" if i == 0 else None))
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("trained eps (1/255; huber: eps = eps2)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
