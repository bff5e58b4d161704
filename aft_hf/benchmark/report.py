"""Benchmark outputs: report.json (every setting), report.md (one row per dataset, the average, per model
and the difference between models), benchmark.png, and one card report per model for ``aft-hf push``.

report.json (``schema`` ``aft_hf.benchmark``, ``schema_version`` 1)::

    {"schema": "aft_hf.benchmark", "schema_version": 1, "aft_hf_version": str, "created": ISO-8601 UTC,
     "complete": bool,                     # every (model, dataset) done
     "models": [str], "text_model": str|null, "protocol": {Protocol fields}, "is_protocol": bool,
     "deviations": [str],                  # every way a number differs from the protocol's
     "launch": {"num_processes": int, "device": str, "compiled_encoder": bool,
                "image_sizes": {model: int}},     # the side each model saw (the models run in this process)
     "datasets": [{"name", "ref", "hub_id", "local_dir", "split", "images", "classes", "templates",
                   "image_types": {ext: n}, "shards": n, "clean_images", "robust_images",
                   "protocol_robust_images", "in_average", "copy_of_hub_dataset": bool,
                   "deviations": [str]}],
     "results": {model: {dataset name: {"clean_top1", "clean_top5" (null under 5 classes),
                 "clean_mean_per_class_recall", "clean_images", "robust_top1": {"2/255": float, ...},
                 "robust_images", "clean_top1_attacked_images", "targets", "attacks", "worst_case_steps_per_image"}}},
     "average": {model: {"datasets": [name], "clean_top1": float, "robust_top1": {budget: float}}},
     "figures": {"benchmark": "benchmark.png"}, "card_reports": {model: "card_<model>.json"},
     "columns": {model: str}}            # each model's short name: its state folder, report.md column and card

A card report is an ``aft-hf evaluate``-style report (schema 1) whose ``reports`` list holds one
evaluate-style report per dataset; :mod:`aft_hf.card` turns each into model-index entries.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional, Sequence

from ..constants import VERSION as __version__
from ..evaluate.apgd import attack_description
from ..evaluate.report import SCHEMA_VERSION as EVALUATE_SCHEMA_VERSION
from ..evaluate.runner import distinct_slugs
from ..files import WEIGHTS_HASH_KEY
from .protocol import Protocol, budget_key
from .suites import known_dataset

SCHEMA = "aft_hf.benchmark"
SCHEMA_VERSION = 1
REPORT_JSON, REPORT_MD, FIGURE = "report.json", "report.md", "benchmark.png"


def dataset_entry(plan, protocol: Protocol) -> dict:
    """What report.json records of one dataset: where it came from, its size, its sample, its deviations."""
    data, req = plan.data, plan.request
    deviations, is_copy = [], True
    if plan.clean_images < len(data):
        deviations.append(f"clean accuracy on the first {plan.clean_images} of {len(data)} test images")
    if (targets := protocol.target_deviation(len(data.classnames))) is not None:
        deviations.append(targets)
    if plan.robust_images != min(req.protocol_robust_images, len(data)):
        deviations.append(f"{plan.robust_images} images attacked (protocol {req.protocol_robust_images})")
    if data.hub_id is None:
        deviations.append("a local folder, not a known Hub dataset")
    else:  # a copy under --data-root: no copy of the Hub dataset if it is smaller than the sample or its classes differ
        known = known_dataset(data.hub_id)
        if len(data) < req.protocol_robust_images:  # still its data: its numbers carry "not the protocol's"
            deviations.append(f"{len(data)} test images, fewer than the {req.protocol_robust_images} the protocol attacks: "
                              f"not a whole copy of {data.hub_id}")
        if known is not None and known.classes is not None and len(data.classnames) != known.classes:
            is_copy = False
            deviations.append(f"{len(data.classnames)} classes where {data.hub_id} has {known.classes}: not a copy of it")
    return {"name": req.name, "ref": req.ref, "hub_id": data.hub_id, "local_dir": data.local_dir,
            "split": data.split, "images": len(data), "classes": len(data.classnames),
            "templates": len(data.templates), "image_types": data.image_types, "shards": len(data.shards),
            "clean_images": plan.clean_images, "robust_images": plan.robust_images,
            "protocol_robust_images": req.protocol_robust_images, "in_average": req.in_average,
            "copy_of_hub_dataset": data.hub_id is not None and is_copy, "deviations": deviations}


def averages(results: dict, datasets: Sequence[dict], protocol: Protocol) -> dict:
    """Per model, the mean over the datasets in the average (only when each of them is done)."""
    names = [d["name"] for d in datasets if d["in_average"]]
    out = {}
    for model, per in results.items():
        done = [per[n] for n in names if n in per]
        if not done or len(done) != len(names):
            continue
        out[model] = {"datasets": names, "clean_top1": sum(r["clean_top1"] for r in done) / len(done),
                      "robust_top1": {budget_key(e): sum(r["robust_top1"][budget_key(e)] for r in done) / len(done)
                                      for e in sorted(protocol.eps)}}
    return out


def build_report(models: Sequence[str], text_model: Optional[str], protocol: Protocol, datasets: list[dict],
                 results: dict, launch: dict, columns: Optional[dict] = None) -> dict:
    """report.json's content; ``columns``: each model's short name (its state folder), default numbered slugs."""
    deviations = protocol.deviations() + [f"{d['name']}: {x}" for d in datasets for x in d["deviations"]]
    complete = all(d["name"] in results.get(m, {}) for m in models for d in datasets)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "aft_hf_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "complete": complete, "models": list(models), "text_model": text_model,
            "protocol": protocol.as_dict(), "is_protocol": not deviations, "deviations": deviations,
            "launch": launch, "datasets": datasets, "results": results,
            "average": averages(results, datasets, protocol), "figures": {}, "card_reports": {},
            "columns": dict(columns or zip(models, distinct_slugs(models)))}


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _diff(a: Optional[float], b: Optional[float]) -> str:
    return "n/a" if a is None or b is None else f"{100 * (b - a):+.1f}"


def markdown(report: dict) -> str:
    """report.md: accuracies in %, one row per dataset and the average; columns per model and, with
    several models, each other model minus the first."""
    models, budgets = report["models"], [budget_key(e) for e in report["protocol"]["eps"]]
    budgets = sorted(budgets, key=lambda k: float(k.split("/")[0]))
    short = _columns(report)
    cols = ["clean"] + budgets
    p = report["protocol"]
    lines = ["# Zero-shot robustness benchmark", "",
             f"Zero-shot top-1 accuracy (%), clean and under {attack_description('apgd')} "
             f"({p['iterations']} iterations; APGD-CE {p['ce_restarts']} restart(s), APGD-T {p['t_restarts']} "
             f"restart(s) x {p['targets']} target classes, none for 2-class datasets), "
             f"logits 100 x cos(image, class); class names and templates from each dataset.", ""]
    if report["is_protocol"]:
        lines += ["These numbers follow the protocol (clip_benchmark / RobustVLM).", ""]
    else:
        lines += ["**Not the protocol's numbers** in these respects:", ""]
        lines += [f"- {d}" for d in report["deviations"]] + [""]
    if not report["complete"]:
        lines += ["**Incomplete run**: datasets without numbers are still to do (run the same command again).", ""]
    header = ["dataset"] + [f"`{short[m]}` {c}" for m in models for c in cols]
    others = models[1:]
    header += [f"`{short[m]}` - `{short[models[0]]}` {c}" for m in others for c in cols]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def values(r: Optional[dict]) -> list[Optional[float]]:
        if r is None:
            return [None] * len(cols)
        return [r["clean_top1"]] + [r["robust_top1"].get(b) for b in budgets]

    rows = [(d["name"] + ("" if d["in_average"] else " (not in average)"),
             [values(report["results"].get(m, {}).get(d["name"])) for m in models]) for d in report["datasets"]]
    n_avg = sum(d["in_average"] for d in report["datasets"])
    rows.append((f"**average ({n_avg} dataset{'s' * (n_avg != 1)})**", [values(report["average"].get(m)) for m in models]))
    for name, per_model in rows:
        cells = [name] + [_pct(v) for vals in per_model for v in vals]
        cells += [_diff(a, b) for vals in per_model[1:] for a, b in zip(per_model[0], vals)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(short[m] != m for m in models):  # a column names its model in full once
        lines += ["", "Models: " + "; ".join(f"`{short[m]}` = `{m}`" for m in models) + "."]
    lines += _attacked_subset_lines(report, models, short)
    lines += ["", "| dataset | source | split | images | attacked | classes | templates | image types |",
              "|---|---|---|---|---|---|---|---|"]
    for d in report["datasets"]:
        types = ", ".join(f"{k} {v}" for k, v in d["image_types"].items())
        lines.append(f"| {d['name']} | `{d['hub_id'] or d['local_dir']}` | {d['split']} | {d['clean_images']} | "
                     f"{d['robust_images']} | {d['classes']} | {d['templates']} | {types} |")
    lines += ["", f"Settings: {', '.join(f'{k} `{v}`' for k, v in p.items())}; "
                  f"{report['launch'].get('num_processes', 1)} process(es) on {report['launch'].get('device')}"
                  f"{', image encoder compiled' if report['launch'].get('compiled_encoder') else ''}"
                  + "".join(f"; `{short.get(m, m)}` at {px} px" for m, px in (report["launch"].get("image_sizes") or {}).items())
                  + ".", ""]
    if report["figures"]:
        lines += [f"![benchmark]({report['figures']['benchmark']})", ""]
    return "\n".join(lines)


def _columns(report: dict) -> dict:
    """{model: its short name}: the report's own (state folders), or numbered slugs for a report without them."""
    return report.get("columns") or dict(zip(report["models"], distinct_slugs(report["models"])))


def _attacked_subset_lines(report: dict, models: Sequence[str], short: dict) -> list[str]:
    """Where only the first images are attacked, their clean accuracy: the robust columns' own baseline (clean
    accuracy is over the whole split, as the protocol has it, so on a small sample robust can exceed it)."""
    subset = [d for d in report["datasets"] if d["robust_images"] < d["clean_images"]]
    if not subset:
        return []
    lines = ["", "Robust accuracy is measured on the first images of each dataset and clean accuracy on all of them, "
             "as the protocol does; the clean accuracy of the attacked images alone:", "",
             "| dataset | attacked images | " + " | ".join(f"`{short[m]}` clean on them" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for d in subset:
        results = [report["results"].get(m, {}).get(d["name"]) or {} for m in models]
        cells = [d["name"], str(d["robust_images"])] + [_pct(r.get("clean_top1_attacked_images")) for r in results]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(report: dict, out: Path) -> Path:
    """Grouped bars: one panel per measure (clean, each budget), datasets on x, one bar per model."""
    from matplotlib.figure import Figure

    budgets = sorted((budget_key(e) for e in report["protocol"]["eps"]), key=lambda k: float(k.split("/")[0]))
    measures = ["clean"] + budgets
    names = [d["name"] for d in report["datasets"]] + ["average"]
    models = report["models"]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) * max(len(models), 1) + 2), 2.6 * len(measures)))
    axes = fig.subplots(len(measures), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(models), 1)
    for ax, measure in zip(axes, measures):
        for j, m in enumerate(models):
            per = dict(report["results"].get(m, {}))
            if m in report["average"]:
                per["average"] = report["average"][m]
            ys = [(r["clean_top1"] if measure == "clean" else r["robust_top1"].get(measure)) if r else None
                  for r in (per.get(n) for n in names)]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, [100 * y if y is not None else 0 for y in ys], width, label=m if len(m) <= 40 else "..." + m[-37:])
        ax.set_ylabel(f"{measure} top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    axes[0].set_title("zero-shot accuracy, clean and under APGD-CE + APGD-T, L-inf\n(APGD-CE alone on 2-class datasets)"
                      + ("" if report.get("is_protocol", True) else "; not the protocol's: see the report's deviations"),
                      fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def card_report(report: dict, model: str) -> dict:
    """The report ``aft-hf push --report`` reads for ``model``: one evaluate-style report per done dataset."""
    p = report["protocol"]
    subs = []
    for d in report["datasets"]:
        r = report["results"].get(model, {}).get(d["name"])
        if r is None:
            continue
        deviations = [x for x in report["deviations"] if not x.startswith(tuple(
            f"{o['name']}: " for o in report["datasets"]))] + d["deviations"]
        attack = {"name": ("APGD-CE+APGD-T" if r["targets"] else "APGD-CE") + ", L-inf"
                  + ("" if not deviations else ", not the protocol's"),
                  "images": r["robust_images"], "iterations": p["iterations"], "ce_restarts": p["ce_restarts"],
                  "t_restarts": p["t_restarts"], "targets": r["targets"],
                  "protocol": "clip_benchmark/RobustVLM" if not deviations else "not the protocol's: " +
                  "; ".join(deviations)}
        metrics = {"zeroshot_top1": r["clean_top1"], "zeroshot_top5": r["clean_top5"],
                   "robust_top1": r["robust_top1"], "robust_attack": attack}
        subs.append({"schema_version": EVALUATE_SCHEMA_VERSION, "measured_with": "aft-hf benchmark",
                     "model": model, "text_model": report["text_model"] or model,
                     # a folder that is no copy of the Hub dataset it stands in for is named as the folder it is
                     "dataset": d["hub_id"] if d.get("copy_of_hub_dataset", d["hub_id"] is not None) else d["local_dir"],
                     "split": d["split"], "num_samples": r["clean_images"],
                     "num_classes": d["classes"], "num_templates": d["templates"],
                     "class_names_source": "the dataset's classnames.txt", "seed": p["seed"],
                     "metrics": {k: v for k, v in metrics.items() if v is not None}})
    hashes = {r.get(WEIGHTS_HASH_KEY) for r in report["results"].get(model, {}).values()} - {None}
    return {"schema_version": EVALUATE_SCHEMA_VERSION, "measured_with": "aft-hf benchmark", "model": model,
            **({WEIGHTS_HASH_KEY: hashes.pop()} if len(hashes) == 1 else {}),
            "metrics": {}, "reports": subs, "figures": dict(report["figures"])}


def write_reports(report: dict, out: Path) -> dict:
    """report.json, report.md, the figure and the card reports, all in ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    if any(report["results"].values()):
        figure(report, out / FIGURE)
        report["figures"] = {"benchmark": FIGURE}
    for m, short in _columns(report).items():
        name = f"card_{short}.json"
        (out / name).write_text(json.dumps(card_report(report, m), indent=1))
        report["card_reports"][m] = name
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1))
    (out / REPORT_MD).write_text(markdown(report))
    return report


__all__ = ["FIGURE", "REPORT_JSON", "REPORT_MD", "SCHEMA", "SCHEMA_VERSION", "build_report", "card_report",
           "dataset_entry", "markdown", "write_reports"]
