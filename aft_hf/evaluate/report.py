"""Evaluation reports: JSON (machine-readable, schema below, read by the Hub model card) and Markdown.

JSON schema (``schema_version`` 1; ``results`` was added to it without removing anything, so
readers of the flat ``metrics`` keep working and older reports without ``results`` stay readable)::

    {"schema_version": 1, "aft_hf_version": str, "created": ISO-8601 UTC,
     "model": str, "text_model": str, "dataset": str, "split": str,
     "num_samples": int, "skipped_images": int, "num_classes": int,
     "class_names_source": str, "num_templates": int, "methods": [str], "seed": int,
     "image_size": int,                            # the side the model saw (since 2026-12-06; absent before)
     "training_overlap": str,                      # only when the images are the model's training split (2026-12-07)
     "results": {metric name: {                    # one entry per metric run, keyed by its --metrics name
        "family": str, "setup_title": str,
        "scalars": [{"quantity": str, "value": float|null, "setting": str|null, "setting_kind": str,
                     "method": str|null, "row": str|null, "better": "higher"|"lower"|null, "percent": bool,
                     "baseline": bool, "hub_metric": str|null, "task": str|null,
                     "sd": float|null}],                # sd: spread over repeats (ROAR's evaluator seeds)
        "curves": [{"name": str, "title": str, "x": [float], "series": {str: [float|null]}, "x_label": str,
                    "y_label": str, "figure": str, "x_percent": bool, "dashed": [str], "labels": {str: str},
                    "spread": {str: [float|null]}, "absent": str}],  # spread: sd band; absent: why not drawn
        "metadata": {str: JSON value}, "notes": [str]}},
     "metrics": {                                  # the flat entries each metric writes (schema 1 keys)
        "zeroshot_top1": float, "zeroshot_top5": float|null,   # top-5 null (n/a) with fewer than 5 classes
        "robust_top1": {"1/255": float, "2/255": float, "4/255": float},
        "robust_attack": {"attack": "apgd"|"pgd", "name": str, "norm": str, "steps": int,
                          "restarts": int, "targets": int, "eps": [str],    # restarts/targets: apgd only
                          "precision": "bf16"|"fp16", "compiled": true},      # only when autocast / compile was used
        "deletion":  {"fractions": [float], "order": "most"|"least", "baseline": "zero"|"blur"|"mean",
                      "clean_probability": float, "normalised": str,
                      "methods": {method|"random": {"auc": float, "auc_unnormalised": float, "curve": [float],
                                                    "random_auc": float, "auc_minus_random": float}}},
        "insertion": {... same as deletion ...},
        "roar": {"fractions": [float], "accuracy": {method|"random": [float]},   # accuracy: mean over repeats
                 "accuracy_sd": {method|"random": [float|null]}, "per_seed": {method|"random": [[float]]},
                 "intact_accuracy": float, "intact_accuracy_per_seed": [float], "evaluator_seeds": [int],
                 "floor": float, "below_floor": bool, "test_images": int, "evaluator": str,
                 "evaluator_kind": "cnn"|"probe", "evaluator_options": {...},   # options: cnn only
                 "split": {"train": int, "test": int}},
                 # below the floor (or too few images): no accuracy/accuracy_sd/per_seed, "skipped": str says why
        "pointing_game": {method: {"exact": float, "tolerance_<N>px": float}},
        "energy_in_mask": {method: {"energy": float, "chance": float}},
        "n_empty_masks": int,                     # with pointing/energy: masks skipped as empty
        "gini": {method: float},
        "randomisation_spearman": {method: float|null},   # mean over images whose maps are not constant
        "randomisation_undefined": {method: int}},        # images left out: a constant map has no rank order
     "metric_inputs": {metric: str},              # what each metric reads (raw maps, never display maps)
     "citations": {metric: str}, "timing_s": {metric: float}, "figures": {name: relative path},
     "per_image": {"label": [int], "zeroshot_pred": [int],    # with zeroshot / robust; in image order,
                   "robust": {"1/255": [bool], ...}}}         # the same under several processes

``results`` is what every reader uses (this module's Markdown, the figures, the model card, the
comparison of several models): it is self-describing, so a new metric needs no edit here. A
report written before ``results`` existed is read through the registered metrics' ``present``
(:func:`aft_hf.results.report_results`).

Accuracies are fractions in [0, 1]; NaN becomes null. Deletion/insertion ``auc`` and ``curve`` are
divided by ``clean_probability`` (the model's mean true-class probability on the unmodified
images), so models of different confidence compare; ``random_auc`` is the random ranking's on the
same model and images (``methods`` entries without ``random_auc`` are the random ranking itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..constants import OVERLAP_KEY, REPORT_SCHEMA_VERSION
from ..results import Scalar, report_results

SCHEMA_VERSION = REPORT_SCHEMA_VERSION


def format_value(scalar: Scalar) -> str:
    """A scalar as the reports print it: a fraction marked ``percent`` as ``76.6%``, other floats to 3 decimals,
    followed by ``± sd`` when the scalar has a spread over repeats (``76.6% ± 2.1%``)."""
    v = scalar.value
    if v is None:
        return "n/a"
    text = _number(v, scalar.percent)
    return text if scalar.sd is None else f"{text} ± {_number(scalar.sd, scalar.percent)}"


def _number(v, percent: bool) -> str:
    return f"{100 * v:.1f}%" if percent else f"{v:.3f}" if isinstance(v, float) else str(v)


def _header(report: dict) -> list[str]:
    """Title and data line; what the caller did not describe (``evaluate_model(info=...)``, optional) is left out."""
    given = {k: v for k, v in report.items() if v is not None}
    where = ""
    if "dataset" in given:
        where = f"Dataset `{given['dataset']}`" + (f" split `{given['split']}`" if "split" in given else "") + ": "
    line = (where + f"{report['num_samples']} images"
            + (f" ({given['skipped_images']} unreadable skipped)" if "skipped_images" in given else "")
            + f", {report['num_classes']} classes"
            + (f" ({given['class_names_source']})" if "class_names_source" in given else "")
            + f", {report['num_templates']} prompt template(s)"
            + (f", {given['image_size']} px input" if given.get("image_size") else "") + "."
            + (f" Text tower: `{given['text_model']}`." if "text_model" in given else ""))
    warning = [f"**Warning: {given[OVERLAP_KEY]}.**", ""] if given.get(OVERLAP_KEY) else []
    return [f"# Evaluation of `{given['model']}`" if "model" in given else "# Evaluation", "", line, "", *warning]


def markdown(report: dict) -> str:
    """A human-readable summary of one report, built from its results (any metric, no metric named here)."""
    results = report_results(report)
    lines = _header(report)
    plain = [s for r in results.values() for s in r.scalars if s.method is None]
    if plain:
        lines += ["## Results", "", "| metric | setting | value |", "|---|---|---|"]
        lines += [f"| {s.quantity} | {s.setting or ''} | {format_value(s)} |" for s in plain]
        lines.append("")
    per_method = [s for r in results.values() for s in r.scalars if s.method is not None]
    if per_method:
        cols = list(report.get("methods") or [])
        cols += [s.method for s in per_method if s.method not in cols and s.baseline]
        cols += [s.method for s in per_method if s.method not in cols]
        cols = list(dict.fromkeys(cols))
        rows: dict[str, dict[str, str]] = {}
        for s in per_method:
            rows.setdefault(s.row or s.quantity, {})[s.method] = format_value(s)
        lines += ["## Attribution quality", "", "| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(vals.get(c, "") for c in cols) + " |" for name, vals in rows.items()]
        lines.append("")
    notes = list(dict.fromkeys(n for r in results.values() for n in r.notes))  # pointing and energy share one
    if notes:
        lines += notes[:1] + [line for n in notes[1:] for line in ("", n)] + [""]
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
