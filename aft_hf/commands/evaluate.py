"""``aft-hf evaluate``: zero-shot accuracy (clean and under APGD or PGD) and attribution metrics, as reports.

    aft-hf evaluate --model out/final --dataset ILSVRC/imagenet-1k --split validation \\
        --max-samples 5000 --metrics zeroshot robust deletion roar --out report/

Under ``accelerate launch`` with several processes the ``zeroshot`` and ``robust`` metrics share the
batches out (:mod:`aft_hf.evaluate.sharding`) and the main process writes the one-process report; the
other metrics are refused there.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import DataConfig
from ..data import check_source
from ..data.images import image_geometry
from ..env import emulated_bf16_warning, launcher_precision
from ..evaluate.apgd import AUTOCAST_DTYPES
from ..evaluate.boxes import BOX_FORMATS, BOX_UNITS
from ..evaluate.classnames import is_imagenet_1k, names_from_feature, resolve_classnames, resolve_templates
from ..evaluate.data import load_labelled_images
from ..evaluate.evaluators import CNNOptions
from ..evaluate.faithfulness import DEFAULT_ROAR_FLOOR
from ..evaluate.held_out import OVERLAP_KEY, training_data_of, training_overlap
from ..evaluate.metrics import METRICS
from ..evaluate.runner import (
    DEFAULT_METRICS,
    EvaluationError,
    check_shardable,
    distinct_slugs,
    evaluate_model,
    numbered,
    resolve_metrics,
    write_outputs,
)
from ..evaluate.sharding import Shard, launched_processes, make_accelerator
from ..evaluate.zeroshot import ATTACKS, DEFAULT_ITERATIONS
from ..explain import available_methods, resolve_method
from ..explain.loading import load_models_and_texts, pick_device
from ..explain.options import OptionProblems
from ..files import WEIGHTS_HASH_KEY, tower_weights_sha256
from ..outputs import check_results_owner, results_folder
from ..registry import Registry
from ..results import Scalar
from ..threat_models import DEFAULT_NORM, apgd_norms, robust_budget_problems
from . import (
    EVALUATE_DATA_OPTIONS,
    DefaultsHelpFormatter,
    add_data_quality_arguments,
    add_device_and_out_arguments,
    add_model_arguments,
    check_data_quality_arguments,
    data_messages_as,
)

logger = logging.getLogger(__name__)
WRITER = "aft-hf evaluate"  # what this command's results manifest names (aft_hf.outputs.results_folder)

ATTACK_RESTARTS, ATTACK_TARGETS = 1, 9
"""APGD's restarts and target classes by default (the field's protocol); PGD takes neither."""


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="zero-shot accuracy (clean, under APGD/PGD) and saliency metrics "
                                               "-> JSON/Markdown/PNG",
                              description="Zero-shot accuracy (clean and under APGD or PGD) and attribution "
                                          "metrics of one or more CLIP models on a labelled dataset -> OUT/"
                                          "report.json, report.md and figures (one subfolder per model, plus "
                                          "comparison.md, when several are given).",
                              formatter_class=DefaultsHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--label", action="append", default=None,
                   help="a name per --model for reports, figures and the sub-folder (repeat, in --model order; "
                        "default: the model's last path part, numbered when two coincide: final, final#2)")
    p.add_argument("--dataset", required=True,
                   help="Hub id, 'imagefolder' (with --data-dir), a local folder, or builtin:shapes")
    p.add_argument("--data-dir", help="folder of images for --dataset imagefolder")
    p.add_argument("--config-name", help="dataset configuration name (passed to datasets.load_dataset)")
    p.add_argument("--split", help="default: validation, else test, else train")
    p.add_argument("--image-column", default="image", help="column holding the images")
    p.add_argument("--label-column", default="label",
                   help="column holding the labels: class indices, or class names looked up in the class names")
    p.add_argument("--mask-column", help="image column of object masks (pointing game, energy)")
    p.add_argument("--box-column", help="column of object boxes (one box or a list: their union), in the "
                                        "convention of --box-format and --box-units")
    p.add_argument("--box-format", choices=list(BOX_FORMATS), default="xyxy",
                   help="xyxy: corners [x0, y0, x1, y1]; xywh: [x, y, w, h] (COCO)")
    p.add_argument("--box-units", choices=list(BOX_UNITS), default="pixels",
                   help="pixels of the original (upright) image, or normalised to [0, 1]")
    p.add_argument("--max-samples", type=int, default=500, help="at most this many images (>= 1)")
    p.add_argument("--streaming", action="store_true",
                   help="stream the dataset (the first --max-samples images, not a shuffled subset)")
    add_data_quality_arguments(p)
    p.add_argument("--class-names", help="file with one class name per line (label order)")
    p.add_argument("--imagenet-classnames", action="store_true", help="use the shipped cleaned ImageNet-1k names")
    p.add_argument("--templates", help="'simple', 'clip80', a file (one per line) or one template with {} "
                                       "(default: clip80 for ImageNet names, else simple)")
    p.add_argument("--metrics", nargs="+", action="extend",
                   help=f"from: {', '.join(METRICS)} (repeatable; default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam"],
                   help=f"attribution methods for the map metrics, from: {', '.join(available_methods())}")
    p.add_argument("--eps", nargs="+", type=float, default=[1, 2, 4],
                   help="budgets in 1/255 units (>= 0): per pixel for L-inf, the L2 radius for --robust-norm l2")
    p.add_argument("--robust-norm", default=DEFAULT_NORM, type=Registry.key,
                   help=f"the threat model of the robust accuracy: {', '.join(apgd_norms())} (default {DEFAULT_NORM}; "
                        "the field's table is L-inf), or a norm of yours registered with apgd_supported")
    p.add_argument("--robust-attack", choices=ATTACKS, default="apgd",
                   help="robust accuracy under APGD-CE then APGD-T (AutoAttack's APGD part, worst case per image) "
                        "or the package's PGD (weaker: over-estimates robustness)")
    p.add_argument("--attack-steps", type=int,
                   help="iterations per attack run (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_ITERATIONS.items()) + ")")
    p.add_argument("--attack-restarts", type=int, default=ATTACK_RESTARTS, help="APGD: random restarts of each attack")
    p.add_argument("--attack-targets", type=int, default=ATTACK_TARGETS,
                   help="APGD-T: target classes (the highest-ranked other classes; 0 = APGD-CE only)")
    p.add_argument("--mixed-precision", choices=list(AUTOCAST_DTYPES),
                   default=launcher_precision(),
                   help="autocast of the robust-accuracy attack's forward passes (bf16 on CPUs with AVX-512 bf16 / "
                        "AMX, or on GPUs; fp16 on CUDA only); default: accelerate's ACCELERATE_MIXED_PRECISION or no")
    p.add_argument("--attack-compile", action="store_true",
                   help="torch.compile the APGD attack's forward: a compilation first (about a minute on a small "
                        "CPU), then cheaper iterations; for long evaluations")
    _add_attribution_metric_arguments(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward/backward pass")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the image subset and every random part of the metrics (attack starts, random "
                        "rankings, ROAR training)")
    add_device_and_out_arguments(p)
    p.set_defaults(func=_cli_evaluate, metric_option_defaults={
        dest: p.get_default(dest) for dests in METRIC_OPTIONS.values() for dest in dests})


def _add_attribution_metric_arguments(p) -> None:
    """The options of ROAR, deletion/insertion and the pointing game."""
    p.add_argument("--roar-fractions", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="ROAR: fractions of the pixels removed (each strictly between 0 and 1)")
    p.add_argument("--deletion-steps", type=int, default=20, help="deletion/insertion: points on each curve")
    p.add_argument("--deletion-order", choices=["most", "least"], default="most",
                   help="perturb most-relevant-first (MoRF) or least-relevant-first (LeRF)")
    p.add_argument("--baseline", choices=["mean", "zero", "blur"], default=None,
                   help="uninformative image for deletion/insertion (default as in RISE: deletion zero, insertion blur)")
    p.add_argument("--roar-evaluator", choices=["cnn", "probe"], default="cnn",
                   help="ROAR retrains a small CNN from scratch (cnn) or a linear probe on the model's embeddings")
    p.add_argument("--roar-epochs", type=int, default=CNNOptions.epochs,
                   help=f"ROAR: training epochs of the CNN evaluator (default {CNNOptions.epochs})")
    p.add_argument("--roar-repeats", type=int, default=1,
                   help="ROAR: evaluators retrained per point with different seeds (their spread is shown)")
    p.add_argument("--roar-floor", type=float, default=DEFAULT_ROAR_FLOOR,
                   help="ROAR: minimum accuracy of the evaluator on intact held-out images; below it ROAR is flagged "
                        f"and no curve is drawn as a result (default {DEFAULT_ROAR_FLOOR}; 0: no floor)")
    p.add_argument("--tolerance", type=int, default=None,
                   help="pointing-game tolerance in pixels (default: 15 px at 224 px, scaled to the model's input "
                        "size, e.g. 4 px at 64 px)")


METRIC_OPTIONS = {"robust": ("eps", "robust_norm", "robust_attack", "attack_steps", "attack_restarts", "attack_targets",
                             "attack_compile"),
                  "roar": ("roar_fractions", "roar_evaluator", "roar_epochs", "roar_repeats", "roar_floor"),
                  "deletion or insertion": ("deletion_steps", "deletion_order", "baseline"),
                  "pointing": ("tolerance",)}
"""The options that only a metric reads: given without it, they would be ignored silently, so they are refused."""


def _unused_metric_options(args, metrics: list[str]) -> list[str]:
    """A problem per metric whose options were given (other than their defaults) while the metric is not run."""
    defaults = getattr(args, "metric_option_defaults", {})
    problems = []
    for metric, dests in METRIC_OPTIONS.items():
        given = [f"--{d.replace('_', '-')}" for d in dests if d in defaults and getattr(args, d) != defaults[d]]
        if given and not any(m in metrics for m in metric.split(" or ")):
            several = len(given) > 1
            problems.append(f"{', '.join(given)} only appl{'y' if several else 'ies'} to the {metric} metric, which "
                            f"--metrics does not run: add it to --metrics or leave {'them' if several else 'it'} out")
    return problems


def _check_options(args) -> list[str]:
    """Every option problem at once, before any model or data loads; returns the metric names."""
    problems = OptionProblems()
    metrics = problems.call(lambda: resolve_metrics(args.metrics or list(DEFAULT_METRICS),
                                                    bool(args.mask_column or args.box_column))) or []
    if metrics:
        problems.extend(_unused_metric_options(args, metrics))
    for method in args.methods:
        problems.call(lambda m=method: resolve_method(m))
    if args.templates:
        problems.call(lambda: resolve_templates(args.templates))
    problems.file("--class-names", args.class_names)
    if args.data_dir is not None:
        problems.require(Path(args.data_dir).is_dir(), f"--data-dir '{args.data_dir}' is not a folder")
    if args.label is not None:
        problems.call(lambda: model_labels(args.model, args.label))
    problems.at_least("--max-samples", args.max_samples, 1)
    problems.output_folder("--out", args.out)
    check_data_quality_arguments(args, problems)
    problems.at_least("--batch-size", args.batch_size, 1)
    problems.at_least("--deletion-steps", args.deletion_steps, 1)
    problems.at_least("--tolerance", args.tolerance, 0)
    problems.require(not (args.mask_column and args.box_column), "--mask-column and --box-column both given: the "
                     "localisation metrics read one region per image; give one of them")
    problems.require(args.robust_norm in apgd_norms(), f"--robust-norm: robust accuracy attacks "
                                                        f"{', '.join(apgd_norms())} (with APGD or PGD), not "
                                                        f"{args.robust_norm!r}")
    if args.robust_norm in apgd_norms():
        problems.extend(robust_budget_problems(args.eps or (), args.robust_norm), prefix="--eps: ")
    problems.at_least("--attack-steps", args.attack_steps, 1)
    problems.at_least("--attack-restarts", args.attack_restarts, 1)
    problems.at_least("--attack-targets", args.attack_targets, 0)
    problems.at_least("--roar-epochs", args.roar_epochs, 1)
    problems.at_least("--roar-repeats", args.roar_repeats, 1)
    problems.require(0 <= args.roar_floor <= 1, f"--roar-floor is an accuracy in [0, 1], got {args.roar_floor:g}")
    problems.require(args.robust_attack == "apgd" or (args.attack_restarts == ATTACK_RESTARTS and
                                                   args.attack_targets == ATTACK_TARGETS),
                     f"--attack-restarts and --attack-targets apply to --robust-attack apgd only ({args.robust_attack} "
                     "runs once, untargeted): leave them out")
    problems.require(args.roar_evaluator == "cnn" or args.roar_epochs == CNNOptions.epochs,
                     f"--roar-epochs trains the cnn evaluator; --roar-evaluator {args.roar_evaluator} has no epochs: "
                     "leave it out")
    problems.require(not (args.attack_compile and args.robust_attack != "apgd"),
                     f"--attack-compile applies to --robust-attack apgd only ({args.robust_attack} runs eager)")
    problems.require(args.mixed_precision in AUTOCAST_DTYPES, f"--mixed-precision '{args.mixed_precision}' is not one "
                     f"of {', '.join(AUTOCAST_DTYPES)} (from ACCELERATE_MIXED_PRECISION?)")
    if args.mixed_precision == "fp16" and "robust" in metrics:
        import torch

        on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        problems.require(not on_cpu, "--mixed-precision fp16 is not supported on CPU (a GPU setting here, as in "
                                     "training): use bf16 or no")
    bad = [f for f in args.roar_fractions if not 0 < f < 1]
    problems.require(not bad, "--roar-fractions must lie strictly between 0 and 1 (fractions of pixels removed), "
                              f"got {', '.join(f'{f:g}' for f in bad)}")
    problems.raise_if_any(EvaluationError)
    return metrics


def world_label_feature(folder: str, label_column: str = "label"):
    """The world's ClassLabel for a folder written by ``aft-hf world sample`` (it has ``world.json``), else None.

    Its metadata.jsonl stores plain integer labels, so ``datasets`` sees no ClassLabel; the class
    names, in label order, follow from the world settings that ``world.json`` records.
    """
    from ..world.dataset import WorldError, imagefolder_world, world_features

    if label_column != "label" or not (Path(folder) / "world.json").is_file():
        return None
    try:
        return world_features(imagefolder_world(folder))["label"]
    except WorldError as e:
        logger.warning("%s; class names not taken from it", e)
        return None


def _launch(device: str) -> tuple:
    """(device, shard, accelerator or None): one process as before, or this rank of an ``accelerate launch``
    of several (each its own GPU, or the CPU), whose shard splits the zero-shot and robust batches."""
    if launched_processes() <= 1:
        return pick_device(device), Shard(), None
    if device not in ("auto", "cpu", "cuda"):
        raise EvaluationError(f"--device {device}: under accelerate launch each process takes its own device; "
                              "use --device auto, cuda or cpu")
    pick_device(device)  # an unusable device is refused as in one process
    acc = make_accelerator(device)
    return acc.device, Shard.of(acc), acc


def _cli_evaluate(args, extra) -> int:
    metrics = _check_options(args)  # before loading models and data
    with data_messages_as(EVALUATE_DATA_OPTIONS):  # a missing folder, before the models load
        check_source(DataConfig(dataset=args.dataset, data_dir=args.data_dir))
    check_results_owner(args.out, WRITER)
    check_shardable(metrics, launched_processes())
    device, shard, acc = _launch(args.device)
    if "robust" in metrics and (warning := emulated_bf16_warning(device.type, args.mixed_precision)):
        logger.warning("--mixed-precision bf16: %s", warning)
    encoders, texts, text_sources = load_models_and_texts(args.model, args.text_model, device,
                                                          image_size=args.image_size)
    size = image_geometry(encoders[0])  # the first model's own resize and crop
    with acc.main_process_first() if acc else contextlib.nullcontext(), data_messages_as(EVALUATE_DATA_OPTIONS):
        data = load_labelled_images(args.dataset, size, args.split, args.data_dir, args.config_name,
                                    args.image_column, args.label_column, args.max_samples, args.streaming,
                                    args.seed, args.mask_column, args.box_column,
                                    max_bad_fraction=args.max_bad_fraction, box_format=args.box_format,
                                    box_units=args.box_units)
    named = data.named_labels  # labels given as class names: a world folder's full list of classes, if it is one
    world = (None if names_from_feature(data.label_feature) and not (named or data.names_column) else
             world_label_feature(args.data_dir or args.dataset, "label" if named else args.label_column))
    # labels given as names index the names found, not a data set's classes: a names file is then looked up by name
    feature = world or (None if named and args.class_names else data.label_feature)
    names = resolve_classnames(args.class_names, feature, args.imagenet_classnames)
    source = ("file " + args.class_names if args.class_names else
              "shipped cleaned ImageNet-1k names" if args.imagenet_classnames or is_imagenet_1k(names)
              else "world.json (aft-hf world sample)" if world
              else "the labels' class names, sorted" if named
              else f"the dataset's {data.names_column} column" if data.names_column else "dataset ClassLabel")
    templates = resolve_templates(args.templates, names)
    options = {"robust": {"eps": args.eps, "norm": args.robust_norm, "steps": args.attack_steps, "attack": args.robust_attack,
                          "restarts": args.attack_restarts, "targets": args.attack_targets,
                          "mixed_precision": args.mixed_precision, "compile": args.attack_compile},
               "roar": {"fractions": args.roar_fractions, "evaluator": args.roar_evaluator,
                        "cnn": {"epochs": args.roar_epochs}, "repeats": args.roar_repeats, "floor": args.roar_floor},
               "deletion": {"steps": args.deletion_steps, "order": args.deletion_order, "baseline": args.baseline},
               "insertion": {"steps": args.deletion_steps, "order": args.deletion_order, "baseline": args.baseline},
               "pointing": {"tolerance": args.tolerance}}
    out = Path(args.out)
    several = len(args.model) > 1
    labels = model_labels(args.model, args.label)
    folders = dict(zip(labels, distinct_slugs(labels))) if several else {labels[0]: ""}
    reports, prepared = {}, {size: data}  # images prepared once per geometry, however many models share it
    run = _Run(names, templates, metrics, options, source, folders, shard)
    with results_folder(out, WRITER) if shard.is_main else contextlib.nullcontext():
        _evaluate_each(args, run, zip(args.model, labels, encoders, texts, text_sources), prepared, reports)
    if acc is not None:
        acc.wait_for_everyone()
    return 0


@dataclass(frozen=True)
class _Run:
    """What every model of one ``aft-hf evaluate`` run is scored with, and where its outputs go."""

    class_names: list
    templates: list
    metrics: list
    options: dict
    names_source: str
    folders: dict
    shard: Shard


def _evaluate_each(args, run: _Run, models, prepared: dict, reports: dict) -> None:
    """Each model (name, label, encoder, text tower, its source) evaluated and its outputs written in turn (a
    sub-folder each when there are several), then the comparison; ``prepared``: images by geometry, filled as
    models need them; ``reports``: label -> report, filled."""
    out, several, shard, names = Path(args.out), len(args.model) > 1, run.shard, run.class_names
    for name, label, encoder, text, text_source in models:
        geometry = image_geometry(encoder)
        if geometry not in prepared:
            logger.warning("model %s prepares images differently (%r); they are prepared again for it", name, geometry)
            with data_messages_as(EVALUATE_DATA_OPTIONS):
                prepared[geometry] = load_labelled_images(
                    args.dataset, geometry, args.split, args.data_dir, args.config_name, args.image_column,
                    args.label_column, args.max_samples, args.streaming, args.seed, args.mask_column, args.box_column,
                    max_bad_fraction=args.max_bad_fraction, box_format=args.box_format, box_units=args.box_units)
        data_m = prepared[geometry].for_class_names(names)
        info = {"model": name, "label": label, WEIGHTS_HASH_KEY: tower_weights_sha256(encoder.vision.state_dict()),
                "text_model": text_source, "dataset": args.dataset, "split": data_m.split,
                "skipped_images": data_m.skipped, "class_names_source": run.names_source,
                "image_size": encoder.image_size}
        if overlap := training_overlap(training_data_of(name), args.dataset, data_m.split, args.data_dir):
            logger.warning("model %s: %s", name, overlap)
            info[OVERLAP_KEY] = overlap
        report, ctx = evaluate_model(encoder, text, names, run.templates, data_m.images, data_m.labels, run.metrics,
                                     args.methods, data_m.masks, run.options, args.batch_size, args.seed, info=info,
                                     shard=shard)
        if not shard.is_main:  # every process has the same report; only the main one writes
            continue
        folder = out / run.folders[label]
        figure_label = label if several or args.label else ""
        reports[label] = write_outputs(report, ctx, folder, figure_label, class_names=names,
                                       sources=data_m.sources)
        print(f"{name}{f' ({label})' if label != name else ''}: {folder / 'report.json'}")
    if several and shard.is_main:
        _write_comparison(reports, run.folders, out)


def model_labels(models: Sequence[str], given: Optional[Sequence[str]] = None) -> list[str]:
    """One distinct label per model: ``--label`` as given (one per model, distinct, not empty), else the
    model's last path part without a ``builtin:`` prefix, numbered when two coincide (``final``, ``final#2``)."""
    if given:
        if len(given) != len(models):
            raise EvaluationError(f"{len(given)} --label for {len(models)} --model: give one label per model, "
                                  "in --model order")
        if any(not g.strip() for g in given) or len(set(given)) != len(given):
            raise EvaluationError(f"--label values must be distinct and not empty (got {', '.join(map(repr, given))})")
        return list(given)
    return numbered([Path(m.split(":", 1)[-1].rstrip("/\\")).name or m for m in models], "#")


def _write_comparison(reports: dict, folders: dict, out: Path) -> None:
    """comparison.md (every model's plain results side by side, one row per label), one figure per curve kind
    with every model in it, and ``report.json`` holding every model's report (``reports``; ``folders``: label ->
    its sub-folder). ``aft-hf push --report`` picks the pushed folder's row from it by the weights hash."""
    from urllib.parse import quote

    from ..evaluate.report import format_value
    from ..evaluate.runner import curve_figures
    from ..figures import metric_curves
    from ..files import write_json
    from ..results import report_results

    results = {k: report_results(r) for k, r in reports.items()}
    for figure, curves in curve_figures(results).items():
        metric_curves(curves, out / f"{figure}.png")
    columns: dict[tuple, None] = {}
    values = {}
    for k, by_metric in results.items():
        for r in by_metric.values():
            for s in r.scalars:
                if s.method is None and not s.baseline:
                    columns[(s.quantity, s.setting)] = None
                    values[(k, s.quantity, s.setting)] = s
    names = [f"{q} @ {st}" if st else q for q, st in columns]
    lines = ["# Model comparison", "", "| " + " | ".join(["label", "model", "text tower", *names]) + " |",
             "|" + "---|" * (3 + len(names))]
    for k, r in reports.items():
        cells = ["n/a" if v is None else format_value(v) for v in (values.get((k, q, st)) for q, st in columns)]
        lines.append("| " + " | ".join([k, f"`{r.get('model')}`", f"`{r.get('text_model')}`", *cells]) + " |")
    lines += comparison_table(results, lambda s: s.method is not None, "Attribution quality", (
        "A row per metric and method (setting `random`: a random ranking on the same model and images, `chance`: "
        "the mask's area), a column per model."))
    lines += comparison_table(results, lambda s: s.method is None and s.baseline, "Reference levels", (
        "Not results of the models: they describe the data (the ROAR CNN evaluator is trained on the same intact "
        "images for every model) or chance."))
    lines += ["", "Per-model reports: " + ", ".join(f"[{k}]({quote(folders[k])}/report.md)" for k in reports), ""]
    (out / "comparison.md").write_text("\n".join(lines))
    rows = [{**r, "figures": {n: f"{folders[k]}/{f}" for n, f in (r.get("figures") or {}).items()}}
            for k, r in reports.items()]  # figure paths relative to this report
    first = next(iter(reports.values()))
    write_json(out / "report.json", {"schema_version": first["schema_version"], "aft_hf_version": first.get("aft_hf_version"),
                "created": first.get("created"), "reports": rows})


def comparison_table(results: dict, keep: Callable[[Scalar], bool], title: str, intro: str) -> list[str]:
    """comparison.md's lines for the scalars ``keep`` selects: a row per (quantity, setting), a column per model
    (``results``: label -> {metric: MetricResult}), values as report.md prints them; [] when none is kept."""
    from ..evaluate.report import format_value

    rows: dict[tuple, dict[str, Scalar]] = {}
    for label, by_metric in results.items():
        for r in by_metric.values():
            for s in r.scalars:
                if keep(s):
                    rows.setdefault((s.quantity, s.setting, s.better), {})[label] = s
    if not rows:
        return []
    lines = ["", f"## {title}", "", intro, "", "| metric | setting | better | " + " | ".join(results) + " |",
             "|---|---|---|" + "---|" * len(results)]
    for (quantity, setting, better), by_label in rows.items():
        cells = ["n/a" if by_label.get(k) is None else format_value(by_label[k]) for k in results]
        lines.append(f"| {quantity} | {setting or ''} | {better or ''} | " + " | ".join(cells) + " |")
    return lines
