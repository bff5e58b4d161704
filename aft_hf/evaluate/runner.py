"""One evaluation run: model + text tower + labelled images -> metrics -> JSON, Markdown, PNG figures."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..constants import VERSION as __version__
from ..explain import ExplainError, resolve_method
from ..explain.targets import TextTower
from ..figures import attribution_grid, perturbation_curves, roar_curves
from .base import PER_IMAGE, EvalContext, EvaluationError
from .metrics import ALIASES, METRICS, finite
from .report import SCHEMA_VERSION, write_json, write_markdown
from .sharding import Shard

logger = logging.getLogger(__name__)
DEFAULT_METRICS = ("zeroshot", "robust", "deletion", "insertion", "sparseness")


def resolve_metrics(names: Sequence[str], have_masks: bool) -> list[str]:
    out = []
    for name in names:
        key = ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in METRICS:
            raise EvaluationError(f"unknown metric '{name}' (choose from {', '.join(METRICS)})")
        if METRICS[key].needs_masks and not have_masks:
            raise EvaluationError(f"metric '{key}' needs object masks or boxes: pass --mask-column or --box-column")
        if key not in out:
            out.append(key)
    return out


def check_shardable(names: Sequence[str], processes: int) -> None:
    """Under several processes only metrics that shard their batches (``Metric.shards``) may run; refuse the
    others before any work, in one line (each process would otherwise repeat them on every image)."""
    if processes <= 1:
        return
    resolved = [ALIASES.get(n.strip().lower(), n.strip().lower()) for n in names]
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
    if len(labels) and int(labels.max()) >= len(class_names):
        raise EvaluationError(f"label {int(labels.max())} has no class name ({len(class_names)} names given)")
    names = resolve_metrics(metrics, masks is not None)
    shard = shard or Shard()
    check_shardable(names, shard.count)
    if masks is not None and (masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]):
        raise EvaluationError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: give one mask "
                              "per image, resized and centre-cropped like it")
    methods = [resolve_method(m) for m in methods]
    device = next(encoder.parameters()).device
    class_weights = text.class_embeddings(class_names, templates).to(device)
    encoder.eval()
    ctx = EvalContext(encoder, class_weights, images, labels, methods, text.logit_scale, masks, batch_size, seed,
                      progress and shard.is_main, shard=shard)
    results, timing, citations, inputs, per_image = {}, {}, {}, {}, {}
    options = metric_options or {}
    for name in names:
        metric = METRICS[name](**options.get(name, {}))
        start = time.perf_counter()
        logger.info("metric %s", name)
        values = metric.compute(ctx)
        per_image.update(values.pop(PER_IMAGE, {}))
        results.update(values)
        timing[name] = round(time.perf_counter() - start, 3)
        citations[name] = metric.citation
        if metric.consumes:
            inputs[name] = metric.consumes
    report = {"schema_version": SCHEMA_VERSION, "aft_hf_version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **(info or {}), "num_samples": int(len(images)), "num_classes": len(class_names),
              "num_templates": len(templates), "methods": methods, "seed": seed,
              "metrics": finite(results), "metric_inputs": inputs, "citations": citations, "timing_s": timing, "figures": {}}
    if per_image:
        report["per_image"] = {"label": labels.tolist(), **per_image}
    return report, ctx


def write_outputs(report: dict, ctx: EvalContext, out_dir: Path, label: str, num_examples: int = 4,
                  class_names: Optional[Sequence[str]] = None) -> dict:
    """Figures (examples grid, ROAR, deletion/insertion), report.json and report.md in ``out_dir``.

    ``label`` prefixes the figures' series ("label / method"; "" for just the method); the examples
    name each image's true class when ``class_names`` is given and show the object mask when there is one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    k = min(num_examples, ctx.images.shape[0])
    if ctx.methods and k:
        maps = {f"{label} / {m}" if label else m: ctx.display_maps(m)[:k] for m in ctx.methods}
        if ctx.masks is not None:
            maps = {"object mask": ctx.masks[:k].float(), **maps}
        rows = [f"image {i}" + (f"\n{class_names[int(y)]}" if class_names else "") for i, y in enumerate(ctx.labels[:k])]
        attribution_grid(ctx.images[:k], maps, out_dir / "examples.png", row_titles=rows,
                         plain=["object mask"] if ctx.masks is not None else ())
        figures["examples"] = "examples.png"
    m = report["metrics"]
    if "roar" in m and "accuracy" in m["roar"]:
        roar_curves({label: m["roar"]}, out_dir / "roar.png")
        figures["roar"] = "roar.png"
    if "deletion" in m or "insertion" in m:
        curves = {k2: m[k2] for k2 in ("deletion", "insertion") if k2 in m}
        perturbation_curves({label: curves}, out_dir / "deletion_insertion.png")
        figures["deletion_insertion"] = "deletion_insertion.png"
    report["figures"] = figures
    write_json(report, out_dir / "report.json")
    write_markdown(report, out_dir / "report.md")
    return report


def slug(name: str) -> str:
    s = name.strip().rstrip("/").replace("\\", "/")
    s = s.split(":", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s.replace("/", "__")).strip("._") or "model"


__all__ = ["DEFAULT_METRICS", "EvaluationError", "ExplainError", "check_shardable", "evaluate_model", "resolve_metrics",
           "slug", "write_outputs"]
