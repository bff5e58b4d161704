"""The demo's report: original vs AFT vs noise control, as JSON, a ten-second Markdown table and PNGs.

Every number in the Markdown and the figures is read from the report dict (the JSON), never re-typed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..evaluate.metrics import finite  # noqa: E402
from ..evaluate.stats import nanmean  # noqa: E402
from ..explain import method_label  # noqa: E402
from ..figures import attribution_grid  # noqa: E402
from ..threat_models import DEFAULT_NORM  # noqa: E402
from .measure import METRIC_DIRECTION, paired, spread  # noqa: E402

METRIC_LABELS = {"energy": "energy in mask", "pointing": "pointing (exact)", "pointing_tol": "pointing (tolerant)",
                 "gini": "Gini sparseness", "deletion_auc": "deletion AUC (÷ clean prob.)"}


def aggregate(original: dict, runs: dict[str, list[dict]], methods: Sequence[str]) -> dict:
    """Means, paired differences vs the original (per seed, then mean/sd over seeds) for every variant."""
    metrics: dict = {}
    for method in methods:
        metrics[method] = {}
        for metric, higher in METRIC_DIRECTION.items():
            base = original["per_image"][method][metric]
            row = {"original": nanmean(base), "higher_is_better": higher}
            for variant, seeds in runs.items():
                row[variant] = spread([nanmean(r["per_image"][method][metric]) for r in seeds])
                diffs = [paired(r["per_image"][method][metric], base, higher) for r in seeds]
                row[f"delta_{variant}"] = {**spread([d["mean"] for d in diffs]), "per_seed_paired": diffs}
            metrics[method][metric] = row
    accuracy = {"clean": {"original": original["accuracy"]["clean"]}, "robust": {}}
    for variant, seeds in runs.items():
        accuracy["clean"][variant] = spread([r["accuracy"]["clean"] for r in seeds])
    for eps, value in original["accuracy"]["robust"].items():
        accuracy["robust"][eps] = {"original": value}
        for variant, seeds in runs.items():
            accuracy["robust"][eps][variant] = spread([r["accuracy"]["robust"][eps] for r in seeds])
    random_auc = {"original": original.get("deletion_random_auc", float("nan")),
                  **{v: spread([r.get("deletion_random_auc", float("nan")) for r in seeds]) for v, seeds in runs.items()}}
    return {"metrics": metrics, "accuracy": accuracy, "chance_energy": nanmean(original["chance"]),
            "deletion_random_auc": random_auc}


def objective_table(threats: list[dict], objectives: dict[str, list[dict]]) -> dict:
    """The AFT objective per threat model: original vs each variant, per-image paired (lower is better)."""
    table = {}
    for t in threats:
        orig = t["original_objective"]
        row = {"label": t["label"], "original": {k: nanmean(v) for k, v in orig.items()}}
        for variant in (t["aft"], t["control"], *t.get("objectives", {})):
            if variant is None:
                continue
            seeds = objectives[variant]
            row[variant] = {k: spread([nanmean(r[k]) for r in seeds]) for k in ("adversarial", "clean")}
            diffs = [paired(r["adversarial"], orig["adversarial"], higher_is_better=False) for r in seeds]
            row[f"delta_{variant}"] = {**spread([d["mean"] for d in diffs]), "per_seed_paired": diffs}
        table[t["norm"]] = row
    return table


def _significant(delta: dict) -> bool:
    return all(abs(d["mean"]) > 2 * d["se"] for d in delta["per_seed_paired"] if d["se"] == d["se"])


def verdicts(report: dict) -> list[str]:
    """Sentences derived from the numbers (significant: |mean| > 2 paired SE in every seed): per threat
    model, whether the AFT objective improved, then energy-in-mask per method against the noise control."""
    lines = []
    for t in _threats(report):
        obj = report.get("objective", {}).get(t["norm"])
        if obj and f"delta_{t['aft']}" in obj:
            d = obj[f"delta_{t['aft']}"]
            lines.append(f"{t['label']}: the AFT objective on held-out images (adversarial embedding distance) went "
                         f"from {obj['original']['adversarial']:.3f} to {obj[t['aft']]['adversarial']['mean']:.3f} "
                         f"({d['mean']:+.3f}, {'beyond' if _significant(d) else 'not beyond'} 2 paired SE in every "
                         "seed).")
        for method, rows in report["metrics"].items():
            row = rows["energy"]
            aft, ctrl = row.get(f"delta_{t['aft']}"), row.get(f"delta_{t['control']}")
            if not aft:
                continue
            direction = "raised" if aft["mean"] > 0 else "lowered"
            text = (f"{t['label']}, {method_label(method)}: AFT {direction} energy-in-mask by {aft['mean']:+.3f} "
                    + (f"(sd over seeds {aft['sd']:.3f}; " if aft["sd"] is not None else "(one seed; ")
                    + f"{'beyond' if _significant(aft) else 'not beyond'} 2 paired SE in every seed)")
            if ctrl:
                text += f"; the noise control changed it by {ctrl['mean']:+.3f}"
            for variant, objective in t.get("objectives", {}).items():
                other = row.get(f"delta_{variant}")
                text += f"; {objective} changed it by {other['mean']:+.3f}" if other else ""
            lines.append(text + ".")
    return lines


def _cell(v) -> str:
    if isinstance(v, dict):
        m, sd = v.get("mean"), v.get("sd")
        return "n/a" if m is None or m != m else (f"{m:.3f} ± {sd:.3f}" if sd is not None else f"{m:.3f}")
    return "n/a" if v is None or v != v else f"{v:.3f}"


def variant_label(variant: str) -> str:
    """``aft_linf`` -> ``AFT linf``, ``control_huber`` -> ``noise huber``."""
    kind, _, norm = variant.partition("_")
    return f"{'AFT' if kind == 'aft' else 'noise' if kind == 'control' else kind} {norm}".strip()


def _threats(report: dict) -> list[dict]:
    """The report's threat models; a report from before they were listed had one, with its control."""
    return report.get("threats", [{"norm": DEFAULT_NORM, "aft": "aft", "control": "control", "label": "AFT"}])


def _robust_name(s: dict) -> str:
    name = s.get("robust_attack_name", "PGD, L-inf")
    if s.get("robust_attack") == "apgd":
        name += f" ({s['robust_steps']} iterations, {s['robust_targets']} targets)"
    return name


def markdown(report: dict) -> str:
    variants = report["variants"]
    labels = [variant_label(v) for v in variants]
    s = report["settings"]
    lines = ["# aft_hf demo: does AFT sharpen saliency in a world with known answers?", "",
             f"{s['eval_images']} held-out images, {len(report['seeds'])} seed(s), AFT {s['attack']} "
             f"for {s['steps']} steps; "
             + ("controls: uniform noise of the same budget. " if any(t.get("control") for t in _threats(report))
                else "no noise controls (--no-control). ")
             + "Δ = per-image paired difference vs the original model (mean over seeds ± sd over seeds). "
             f"Energy-in-mask chance level (mask area): {report['chance_energy']:.3f}. Metrics read the raw maps; "
             "deletion AUC is divided by each model's clean probability"
             + (", random ranking: " + ", ".join(f"{k} {_cell(v)}" for k, v in report["deletion_random_auc"].items())
                if "deletion_random_auc" in report else "") + ".", ""]
    others = [o for o in s.get("objectives", []) if o != "embedding"]
    if others:
        lines += [f"Other objectives, one arm per threat model, same attack, data and steps: {', '.join(others)} "
                  "(tecoa: cross-entropy of the zero-shot logits on the world's labels; docs/tecoa.md).", ""]
    lines += ["**Verdict (from the numbers below):**", ""] + [f"- {v}" for v in report["verdicts"]] + [""]
    if report.get("objective"):
        lines += ["**Does the recipe train?** AFT objective on the held-out images: mean squared embedding distance "
                  "to the original's clean embedding under the training attack (↓), and without attack.", "",
                  "| threat model | model | adversarial ↓ | clean | Δ adversarial (paired) |",
                  "|---|---|---|---|---|"]
        for row in report["objective"].values():
            lines.append(f"| {row['label']} | original | {_cell(row['original']['adversarial'])} | "
                         f"{_cell(row['original']['clean'])} | |")
            for v in variants:
                if v in row:
                    lines.append(f"| {row['label']} | {variant_label(v)} | {_cell(row[v]['adversarial'])} | "
                                 f"{_cell(row[v]['clean'])} | {_cell(row[f'delta_{v}'])} |")
        lines.append("")
    header = ["method", "metric", "original"] + [f"Δ {v}" for v in labels]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, rows in report["metrics"].items():
        for metric, row in rows.items():
            arrow = "↑" if row["higher_is_better"] else "↓"
            cells = [method_label(method), f"{METRIC_LABELS[metric]} {arrow}", _cell(row["original"])]
            cells += [_cell(row[f"delta_{v}"]) for v in variants]
            lines.append("| " + " | ".join(cells) + " |")
    acc = report["accuracy"]
    lines += ["", f"Zero-shot accuracy (mean ± sd over seeds); robust: {_robust_name(s)}.", "",
              "| zero-shot accuracy | original | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(variants)]
    lines.append("| clean | " + _cell(acc["clean"]["original"]) + " | "
                 + " | ".join(_cell(acc["clean"][v]) for v in variants) + " |")
    for eps, row in acc["robust"].items():
        lines.append(f"| robust {eps} | " + _cell(row["original"]) + " | " + " | ".join(_cell(row[v]) for v in variants) + " |")
    if "roar" in report:
        from .roar import roar_markdown

        lines += roar_markdown(report["roar"], variant_label)
    lines += ["", f"Wall time: {report['wall_time_s']:.0f} s. Files: `report.json` (all numbers, per seed), "
              "`saliency_grid.png`, `metrics.png`" + (", `roar.png`" if "roar" in report else "")
              + ", `hub_folder/` (Hub-ready AFT model, dry run)."]
    return "\n".join(lines) + "\n"


def metrics_figure(report: dict, out: Path) -> Path:
    """Bars: original / each variant per method, for energy (with chance), tolerant pointing, Gini, deletion AUC."""
    panels = ["energy", "pointing_tol", "gini", "deletion_auc"]
    methods = list(report["metrics"])
    names = ["original"] + report["variants"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    width = 0.8 / len(names)
    for ax, metric in zip(axes, panels):
        for j, name in enumerate(names):
            vals, errs = [], []
            for method in methods:
                v = report["metrics"][method][metric][name]
                vals.append(v["mean"] if isinstance(v, dict) else v)
                errs.append((v["sd"] or 0.0) if isinstance(v, dict) else 0.0)
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [0 if v is None or v != v else v for v in vals], width, yerr=errs, capsize=3,
                   label=name if name == "original" else variant_label(name))
        if metric == "energy":
            ax.axhline(report["chance_energy"], color="k", ls="--", lw=1, label="chance")
        arrow = "↑" if METRIC_DIRECTION[metric] else "↓"
        ax.set_title(f"{METRIC_LABELS[metric]} {arrow}")
        ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], rotation=15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def saliency_grid(images: torch.Tensor, masks: torch.Tensor, original: dict, aft: dict, methods: Sequence[str],
                  out: Path, rows: int = 6) -> Path:
    """Images x (mask, then original and AFT for each method), overlays on the images."""
    k = min(rows, images.shape[0])
    columns = {"target mask": masks[:k].float()}
    for method in methods:
        label = method_label(method)
        columns[f"{label}\noriginal"] = original["maps"][method][:k]
        columns[f"{label}\nAFT"] = aft["maps"][method][:k]
    return attribution_grid(images[:k], columns, out, plain=("target mask",))


def write_report(report: dict, out_dir: Path) -> dict:
    """report.json and report.md (Markdown built from the JSON's numbers)."""
    report = finite(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    loaded = json.loads((out_dir / "report.json").read_text())
    (out_dir / "report.md").write_text(markdown(loaded))
    return loaded


def card_report(report: dict, run: dict, variant_label: str) -> dict:
    """The AFT model's results in the ``aft-hf evaluate`` report schema (what the Hub model card reads),
    from the registered metrics' results of one measured run (:func:`aft_hf.demo.measure.measure`)."""
    from ..constants import REPORT_SCHEMA_VERSION
    from ..evaluate.runner import report_sections

    st = report["settings"]
    return {"schema_version": REPORT_SCHEMA_VERSION, "model": variant_label,
            "dataset": "aft_hf synthetic world (held out)", "split": f"seed {st['eval_seed']}",
            "num_samples": st["eval_images"], "methods": list(run["per_image"]),
            **report_sections(run["results"].values())}
