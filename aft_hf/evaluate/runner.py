"""One evaluation run: model + text tower + labelled images -> metrics -> JSON, Markdown, PNG figures."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..constants import VERSION as __version__
from ..explain import ExplainError, method_label, resolve_method
from ..explain.targets import TextTower
from ..figures import attribution_grid, metric_curves
from ..files import write_json
from ..results import MetricResult, finite, report_results
from .base import EvalContext, EvaluationError
from .metrics import METRICS
from .report import SCHEMA_VERSION, write_markdown
from .sharding import Shard
from .zeroshot import check_labels

logger = logging.getLogger(__name__)
DEFAULT_METRICS = ("zeroshot", "robust", "deletion", "insertion", "gini")


def resolve_metrics(names: Sequence[str], have_masks: bool) -> list[str]:
    out = []
    for name in names:
        key = METRICS.resolve(name)
        if METRICS[key].needs_masks and not have_masks:
            raise EvaluationError(f"metric '{key}' needs object masks or boxes: pass --mask-column or --box-column")
        if key not in out:
            out.append(key)
    return out


def _option_key(name: str) -> str:
    """The metric that options given under ``name`` are for (an alias is its metric; unknown names stay, to be refused)."""
    try:
        return METRICS.resolve(name)
    except EvaluationError:
        return name


def _refuse_unknown_metrics(options: dict) -> None:
    unknown = [k for k in options if k not in METRICS]
    if unknown:
        raise EvaluationError(f"options for unknown metric '{unknown[0]}' (metrics: {', '.join(METRICS)})")


def run_metrics(ctx: EvalContext, names: Sequence[str], options: Optional[dict] = None) -> dict[str, MetricResult]:
    """Each registered metric of ``names`` (resolved names) on ``ctx``, built with ``options[name]`` (every
    metric is built, so every option checked, before any is computed); each result carries its wall time."""
    options = options or {}
    _refuse_unknown_metrics(options)
    results = {}
    metrics = [METRICS[name](**options.get(name, {})) for name in names]  # every option checked before any work
    for name, metric in zip(names, metrics):
        start = time.perf_counter()
        logger.info("metric %s", name)
        result = metric.compute(ctx)
        result.seconds = round(time.perf_counter() - start, 3)
        results[name] = result
    return results


def check_shardable(names: Sequence[str], processes: int) -> None:
    """Under several processes only metrics that shard their batches (``Metric.shards``) may run; refuse the
    others before any work, in one line (each process would otherwise repeat them on every image)."""
    if processes <= 1:
        return
    resolved = [_option_key(n) for n in names]
    alone = [n for n in dict.fromkeys(resolved) if n in METRICS and not METRICS[n].shards]
    if alone:
        sharded = ", ".join(n for n, cls in METRICS.items() if cls.shards)
        raise EvaluationError(f"metric(s) {', '.join(alone)} run in one process only, but {processes} processes were "
                              f"launched: under accelerate launch use --metrics {sharded} (they are sharded "
                              "across processes), and run the others without accelerate launch")


def evaluate_model(encoder: torch.nn.Module, text: TextTower, class_names: Sequence[str], templates: Sequence[str],
                   images: torch.Tensor, labels: torch.Tensor, metrics: Sequence[str] = DEFAULT_METRICS,
                   methods: Sequence[str] = ("saliency", "gradcam"), masks: Optional[torch.Tensor] = None,
                   metric_options: Optional[dict] = None, batch_size: int = 16, seed: int = 0,
                   progress: bool = True, info: Optional[dict] = None,
                   shard: Optional[Shard] = None) -> tuple[dict, EvalContext]:
    """Compute the requested metrics; returns (report dict following report.py's schema, context).

    ``shard``: this process's place under ``accelerate launch`` (:mod:`aft_hf.evaluate.sharding`); every
    process gets the same report, equal to a one-process run's. Metrics that do not shard are refused."""
    check_labels(labels, class_names)
    names = resolve_metrics(metrics, masks is not None)
    shard = shard or Shard()
    check_shardable(names, shard.count)
    if masks is not None and (masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]):
        raise EvaluationError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: give one mask "
                              "per image, resized and centre-cropped like it")
    methods = [resolve_method(m) for m in methods]
    options = {_option_key(k): v for k, v in (metric_options or {}).items()}
    _refuse_unknown_metrics(options)  # options of metrics not asked for are allowed (the CLI passes them all)
    for name in names:  # refuse a misspelt option before the text tower and the maps are computed
        METRICS[name](**options.get(name, {}))
    device = next(encoder.parameters()).device
    class_weights = text.class_embeddings(class_names, templates).to(device)
    encoder.eval()
    ctx = EvalContext(encoder, class_weights, images, labels, methods, text.logit_scale, masks, batch_size, seed,
                      progress and shard.is_main, shard=shard)
    results = run_metrics(ctx, names, {k: v for k, v in options.items() if k in names})
    report = {"schema_version": SCHEMA_VERSION, "aft_hf_version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **(info or {}), "num_samples": int(len(images)), "num_classes": len(class_names),
              "num_templates": len(templates), "methods": methods, "seed": seed,
              **report_sections(results.values())}
    per_image = {k: v for r in results.values() for k, v in r.verdicts.items()}
    if per_image:  # the per-image verdicts, in image order (the same in one process as in several)
        report["per_image"] = {"label": labels.tolist(), **per_image}
    return report, ctx


def report_sections(results) -> dict:
    """``metrics`` (the flat entries), ``results`` (the schema, by metric name), ``metric_inputs``,
    ``citations`` and ``timing_s`` of a report, from the metrics' results."""
    results = list(results)
    flat, inputs, citations = {}, {}, {}
    for r in results:
        flat.update(r.data)
        cls = METRICS.get(r.metric)
        if cls is not None and cls.citation:
            citations[r.metric] = cls.citation
        if cls is not None and cls.consumes:
            inputs[r.metric] = cls.consumes
    return {"metrics": finite(flat), "results": {r.metric: r.to_json() for r in results}, "metric_inputs": inputs,
            "citations": citations, "timing_s": {r.metric: r.seconds for r in results},
            "figures": {}}


def write_outputs(report: dict, ctx: EvalContext, out_dir: Path, label: str, num_examples: int = 4,
                  class_names: Optional[Sequence[str]] = None, sources: Sequence[str] = ()) -> dict:
    """Figures (examples grid, ROAR, deletion/insertion), report.json and report.md in ``out_dir``.

    ``label`` prefixes the figures' series ("label / method"; "" for just the method); the examples
    name each image by ``sources`` (its file name or row in the split) when given, else by its position, with
    its true class when ``class_names`` is given, and show the object mask when there is one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    k = min(num_examples, ctx.images.shape[0])
    if ctx.methods and k:
        maps = {f"{label} / {method_label(m)}" if label else method_label(m): ctx.display_maps(m, k) for m in ctx.methods}
        if ctx.masks is not None:
            maps = {"object mask": ctx.masks[:k].float(), **maps}
        rows = [(sources[i] if i < len(sources) else f"image {i}") + (f"\n{class_names[int(y)]}" if class_names else "")
                for i, y in enumerate(ctx.labels[:k])]
        attribution_grid(ctx.images[:k], maps, out_dir / "examples.png", row_titles=rows,
                         plain=["object mask"] if ctx.masks is not None else ())
        figures["examples"] = "examples.png"
    for figure, curves in curve_figures({label: report_results(report)}).items():
        metric_curves(curves, out_dir / f"{figure}.png")
        figures[figure] = f"{figure}.png"
    report["figures"] = figures
    write_json(out_dir / "report.json", report)
    write_markdown(report, out_dir / "report.md")
    return report


def curve_figures(results: dict[str, dict[str, MetricResult]]) -> dict[str, dict[str, list]]:
    """``{figure: {label: [Curve]}}`` from ``{label: {metric: MetricResult}}``: one PNG per figure name."""
    out: dict[str, dict[str, list]] = {}
    for label, by_metric in results.items():
        for result in by_metric.values():
            for curve in result.curves:
                out.setdefault(curve.figure, {}).setdefault(label, []).append(curve)
    return out


def slug(name: str) -> str:
    s = name.strip().rstrip("/").replace("\\", "/")
    s = s.split(":", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s.replace("/", "__")).strip("._") or "model"


def numbered(names: Sequence[str], sep: str) -> list[str]:
    """The names, a repeated one numbered (``final``, ``final{sep}2``, ...): one distinct name each, in order."""
    out: list[str] = []
    for name in names:
        unique, n = name, 2
        while unique in out:
            unique, n = f"{name}{sep}{n}", n + 1
        out.append(unique)
    return out


def distinct_slugs(names: Sequence[str]) -> list[str]:
    """:func:`slug` of each name, numbered ``_2`` where two names give the same one (``builtin:tiny-clip`` and
    ``./tiny-clip``, ``org/model`` and ``org__model``): each model its own folder, saved state and card."""
    return numbered([slug(name) for name in names], "_")


__all__ = ["DEFAULT_METRICS", "EvaluationError", "ExplainError", "check_shardable", "curve_figures", "evaluate_model",
           "distinct_slugs", "numbered", "report_sections", "resolve_metrics", "run_metrics", "slug",
           "write_outputs"]
