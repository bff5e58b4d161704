"""Evaluation reports: JSON (machine-readable, schema below, read by the Hub model card) and Markdown.

JSON schema (``schema_version`` 1)::

    {"schema_version": 1, "aft_hf_version": str, "created": ISO-8601 UTC,
     "model": str, "text_model": str, "dataset": str, "split": str,
     "num_samples": int, "skipped_images": int, "num_classes": int,
     "class_names_source": str, "num_templates": int, "methods": [str], "seed": int,
     "metrics": {                                  # each key present only when requested
        "zeroshot_top1": float, "zeroshot_top5": float,
        "robust_top1": {"1/255": float, "2/255": float, "4/255": float},
        "robust_attack": {"attack": "apgd"|"pgd", "name": str, "norm": str, "steps": int,
                          "restarts": int, "targets": int, "eps": [str]},   # restarts/targets: apgd only
        "deletion":  {"fractions": [float], "order": "most"|"least", "baseline": "zero"|"blur"|"mean",
                      "clean_probability": float, "normalised": str,
                      "methods": {method|"random": {"auc": float, "auc_unnormalised": float, "curve": [float],
                                                    "random_auc": float, "auc_minus_random": float}}},
        "insertion": {... same as deletion ...},
        "roar": {"fractions": [float], "accuracy": {method|"random": [float]}, "evaluator": str,
                 "evaluator_kind": "cnn"|"probe", "split": {"train": int, "test": int}},
        "pointing_game": {method: {"exact": float, "tolerance_<N>px": float}},
        "energy_in_mask": {method: {"energy": float, "chance": float}},
        "n_empty_masks": int,                     # with pointing/energy: masks skipped as empty
        "gini": {method: float},
        "randomisation_spearman": {method: float}},
     "metric_inputs": {metric: str},              # what each metric reads (raw maps, never display maps)
     "citations": {metric: str}, "timing_s": {metric: float}, "figures": {name: relative path},
     "per_image": {"label": [int], "zeroshot_pred": [int],    # with zeroshot / robust; in image order,
                   "robust": {"1/255": [bool], ...}}}         # the same under several processes

Accuracies are fractions in [0, 1]; NaN becomes null. Deletion/insertion ``auc`` and ``curve`` are
divided by ``clean_probability`` (the model's mean true-class probability on the unmodified
images), so models of different confidence compare; ``random_auc`` is the random ranking's on the
same model and images (``methods`` entries without ``random_auc`` are the random ranking itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from ..constants import REPORT_SCHEMA_VERSION

SCHEMA_VERSION = REPORT_SCHEMA_VERSION


def write_json(report: dict, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{100 * v:.1f}%" if isinstance(v, float) else str(v))


def markdown(report: dict) -> str:
    """A human-readable summary of one report."""
    m = report["metrics"]
    lines = [f"# Evaluation of `{report['model']}`", "",
             f"Dataset `{report['dataset']}` split `{report['split']}`: {report['num_samples']} images "
             f"({report['skipped_images']} unreadable skipped), {report['num_classes']} classes "
             f"({report['class_names_source']}), {report['num_templates']} prompt template(s). "
             f"Text tower: `{report['text_model']}`.", ""]
    if "zeroshot_top1" in m or "robust_top1" in m:
        robust = m.get("robust_top1", {})
        header = ["clean top-1", "clean top-5"] + [f"robust top-1 @ {k}" for k in robust]
        values = [_fmt(m.get("zeroshot_top1")), _fmt(m.get("zeroshot_top5"))] + [_fmt(v) for v in robust.values()]
        lines += ["## Zero-shot accuracy", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  "| " + " | ".join(values) + " |", ""]
        if "robust_attack" in m:
            a = m["robust_attack"]
            extra = f", {a['restarts']} restart(s), {a['targets']} target classes" if "targets" in a else ""
            lines += [f"Attack: {a.get('name', 'PGD, L-inf')}, {a['steps']} iterations{extra}; an image counts as "
                      "robust only when correct clean and every attack fails, at this and every smaller budget.", ""]
    methods = report["methods"]
    rows = []
    for title, key in (("deletion AUC (lower better)", "deletion"), ("insertion AUC (higher better)", "insertion")):
        if key in m:
            rows.append((f"{title}, / clean prob. {_num(m[key].get('clean_probability'))}, "
                         f"baseline {m[key].get('baseline', 'mean')}",
                         {k: _num(v["auc"]) for k, v in m[key]["methods"].items()}))
            better = "negative" if key == "deletion" else "positive"
            rows.append((f"{key} AUC minus random ({better} = better than random)", {k: _num(v["auc_minus_random"])
                                                     for k, v in m[key]["methods"].items() if "auc_minus_random" in v}))
    if "gini" in m:
        rows.append(("Gini sparseness (higher = sparser)", {k: _num(v) for k, v in m["gini"].items()}))
    if "randomisation_spearman" in m:
        rows.append(("Spearman vs randomised model (lower better)",
                     {k: _num(v) for k, v in m["randomisation_spearman"].items()}))
    if "pointing_game" in m:
        for sub in next(iter(m["pointing_game"].values()), {}):
            rows.append((f"pointing game {sub}", {k: _fmt(v[sub]) for k, v in m["pointing_game"].items()}))
    if "energy_in_mask" in m:
        rows.append(("energy in mask (chance)",
                     {k: f"{_fmt(v['energy'])} ({_fmt(v['chance'])})" for k, v in m["energy_in_mask"].items()}))
    if rows:
        cols = methods + (["random"] if any("random" in vals for _, vals in rows) else [])
        lines += ["## Attribution quality", "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(vals.get(c, "") for c in cols) + " |" for name, vals in rows]
        lines.append("")
        if "n_empty_masks" in m:
            lines += [f"Localisation skips images whose mask is empty: {m['n_empty_masks']} here.", ""]
    if "roar" in m and "accuracy" in m["roar"]:
        r = m["roar"]
        lines += ["## ROAR (remove and retrain)", "",
                  f"Evaluator: {r['evaluator']}; train/test {r['split']['train']}/{r['split']['test']}.",
                  "", "| method | " + " | ".join(f"{100 * f:.0f}%" for f in r["fractions"]) + " |",
                  "|---|" + "---|" * len(r["fractions"])]
        lines += [f"| {k} | " + " | ".join(_fmt(a) for a in v) + " |" for k, v in r["accuracy"].items()]
        lines.append("")
    if report.get("metric_inputs"):
        lines += ["## What each metric reads", ""] + [f"- {k}: {v}" for k, v in report["metric_inputs"].items()]
        lines += ["", "Figures show the maps after a 99th-percentile clip and min-max scaling; no metric reads those.", ""]
    if report.get("figures"):
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in report["figures"].items()] + [""]
    if report.get("citations"):
        lines += ["## References", ""] + [f"- {k}: {v}" for k, v in report["citations"].items()] + [""]
    return "\n".join(lines)


def write_markdown(report: dict, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(report))
    return path
