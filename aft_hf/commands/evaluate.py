"""``aft-hf evaluate``: zero-shot accuracy (clean and under APGD or PGD) and attribution metrics, as reports.

    aft-hf evaluate --model out/final --dataset ILSVRC/imagenet-1k --split validation \\
        --max-samples 5000 --metrics zeroshot robust deletion roar --out report/
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import DefaultsHelpFormatter, add_device_and_out_arguments, add_model_arguments
from ..explain import available_methods, resolve_method
from ..explain.loading import load_models_and_texts, pick_device
from ..explain.options import OptionProblems
from ..evaluate.classnames import names_from_feature, resolve_classnames, resolve_templates
from ..evaluate.data import load_labelled_images
from ..evaluate.metrics import METRICS
from ..evaluate.runner import DEFAULT_METRICS, EvaluationError, evaluate_model, resolve_metrics, slug, write_outputs
from ..evaluate.apgd import AUTOCAST_DTYPES
from ..evaluate.zeroshot import ATTACKS, DEFAULT_ITERATIONS

logger = logging.getLogger(__name__)


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="zero-shot accuracy (clean, under APGD/PGD) and saliency metrics "
                                               "-> JSON/Markdown/PNG",
                              description="Zero-shot accuracy (clean and under APGD or PGD) and attribution "
                                          "metrics of one or more CLIP models on a labelled dataset -> OUT/"
                                          "report.json, report.md and figures (one subfolder per model, plus "
                                          "comparison.md, when several are given).",
                              formatter_class=DefaultsHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--dataset", required=True,
                   help="Hub id, 'imagefolder' (with --data-dir), a local folder, or builtin:shapes")
    p.add_argument("--data-dir", help="folder of images for --dataset imagefolder")
    p.add_argument("--config-name", help="dataset configuration name (passed to datasets.load_dataset)")
    p.add_argument("--split", help="default: validation, else test, else train")
    p.add_argument("--image-column", default="image", help="column holding the images")
    p.add_argument("--label-column", default="label", help="column holding the integer class labels")
    p.add_argument("--mask-column", help="image column of object masks (pointing game, energy)")
    p.add_argument("--box-column", help="column of [x0, y0, x1, y1] boxes in original pixels")
    p.add_argument("--max-samples", type=int, default=500, help="at most this many images (>= 1)")
    p.add_argument("--streaming", action="store_true",
                   help="stream the dataset (the first --max-samples images, not a shuffled subset)")
    p.add_argument("--class-names", help="file with one class name per line (label order)")
    p.add_argument("--imagenet-classnames", action="store_true", help="use the shipped cleaned ImageNet-1k names")
    p.add_argument("--templates", help="'simple', 'clip80', a file (one per line) or one template with {} "
                                       "(default: clip80 for ImageNet names, else simple)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help=f"from: {', '.join(METRICS)}")
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam"],
                   help=f"attribution methods for the map metrics, from: {', '.join(available_methods())}")
    p.add_argument("--eps", nargs="+", type=float, default=[1, 2, 4], help="L-inf budgets in 1/255 units (>= 0)")
    p.add_argument("--robust-attack", choices=ATTACKS, default="apgd",
                   help="robust accuracy under APGD-CE then APGD-T (AutoAttack's APGD part, worst case per image) "
                        "or the package's PGD (weaker: over-estimates robustness)")
    p.add_argument("--attack-steps", type=int,
                   help="iterations per attack run (default: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_ITERATIONS.items()) + ")")
    p.add_argument("--attack-restarts", type=int, default=1, help="APGD: random restarts of each attack")
    p.add_argument("--attack-targets", type=int, default=9,
                   help="APGD-T: target classes (the highest-ranked other classes; 0 = APGD-CE only)")
    p.add_argument("--mixed-precision", choices=list(AUTOCAST_DTYPES),
                   default=os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower(),
                   help="autocast of the robust-accuracy attack's forward passes (bf16 on CPUs with AVX-512 bf16 / "
                        "AMX, or on GPUs; fp16 on CUDA only); default: accelerate's ACCELERATE_MIXED_PRECISION or no")
    p.add_argument("--roar-fractions", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="ROAR: fractions of the pixels removed (each strictly between 0 and 1)")
    p.add_argument("--deletion-steps", type=int, default=20, help="deletion/insertion: points on each curve")
    p.add_argument("--deletion-order", choices=["most", "least"], default="most",
                   help="perturb most-relevant-first (MoRF) or least-relevant-first (LeRF)")
    p.add_argument("--baseline", choices=["mean", "zero", "blur"], default=None,
                   help="uninformative image for deletion/insertion (default as in RISE: deletion zero, insertion blur)")
    p.add_argument("--roar-evaluator", choices=["cnn", "probe"], default="cnn",
                   help="ROAR retrains a small CNN from scratch (cnn) or a linear probe on the model's embeddings")
    p.add_argument("--tolerance", type=int, default=None,
                   help="pointing-game tolerance in pixels (default: 15 px at 224 px, scaled to the model's input "
                        "size, e.g. 4 px at 64 px)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward/backward pass")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the image subset and every random part of the metrics (attack starts, random "
                        "rankings, ROAR training)")
    add_device_and_out_arguments(p)
    p.set_defaults(func=_cli_evaluate)


def _check_options(args) -> list[str]:
    """Every option problem at once, before any model or data loads; returns the metric names."""
    problems = OptionProblems()
    metrics = problems.call(lambda: resolve_metrics(args.metrics, bool(args.mask_column or args.box_column))) or []
    for method in args.methods:
        problems.call(lambda m=method: resolve_method(m))
    if args.templates:
        problems.call(lambda: resolve_templates(args.templates))
    problems.file("--class-names", args.class_names)
    if args.data_dir is not None:
        problems.require(Path(args.data_dir).is_dir(), f"--data-dir '{args.data_dir}' is not a folder")
    problems.at_least("--max-samples", args.max_samples, 1)
    problems.at_least("--batch-size", args.batch_size, 1)
    problems.at_least("--deletion-steps", args.deletion_steps, 1)
    problems.at_least("--tolerance", args.tolerance, 0)
    problems.each_at_least("--eps", args.eps, 0)
    problems.at_least("--attack-steps", args.attack_steps, 1)
    problems.at_least("--attack-restarts", args.attack_restarts, 1)
    problems.at_least("--attack-targets", args.attack_targets, 0)
    problems.require(args.mixed_precision in AUTOCAST_DTYPES, f"--mixed-precision '{args.mixed_precision}' is not one "
                     f"of {', '.join(AUTOCAST_DTYPES)} (from ACCELERATE_MIXED_PRECISION?)")
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


def _cli_evaluate(args, extra) -> int:
    metrics = _check_options(args)  # before loading models and data
    device = pick_device(args.device)
    encoders, texts, text_sources = load_models_and_texts(args.model, args.text_model, device)
    size = encoders[0].image_size
    data = load_labelled_images(args.dataset, size, args.split, args.data_dir, args.config_name, args.image_column,
                                args.label_column, args.max_samples, args.streaming, args.seed,
                                args.mask_column, args.box_column)
    world = (None if names_from_feature(data.label_feature) else
             world_label_feature(args.data_dir or args.dataset, args.label_column))
    names = resolve_classnames(args.class_names, world or data.label_feature, args.imagenet_classnames)
    source = ("file " + args.class_names if args.class_names else
              "shipped cleaned ImageNet-1k names" if args.imagenet_classnames or len(names) == 1000
              else "world.json (aft-hf world sample)" if world else "dataset ClassLabel")
    templates = resolve_templates(args.templates or ("clip80" if len(names) == 1000 else "simple"))
    options = {"robust": {"eps": args.eps, "steps": args.attack_steps, "attack": args.robust_attack,
                          "restarts": args.attack_restarts, "targets": args.attack_targets,
                          "mixed_precision": args.mixed_precision},
               "roar": {"fractions": args.roar_fractions, "evaluator": args.roar_evaluator},
               "deletion": {"steps": args.deletion_steps, "order": args.deletion_order, "baseline": args.baseline},
               "insertion": {"steps": args.deletion_steps, "order": args.deletion_order, "baseline": args.baseline},
               "pointing": {"tolerance": args.tolerance}}
    out = Path(args.out)
    reports = {}
    for name, encoder, text, text_source in zip(args.model, encoders, texts, text_sources):
        if encoder.image_size != size:
            logger.warning("model %s expects %d px; images are re-cropped to it", name, encoder.image_size)
            data_m = load_labelled_images(args.dataset, encoder.image_size, args.split, args.data_dir, args.config_name,
                                          args.image_column, args.label_column, args.max_samples, args.streaming,
                                          args.seed, args.mask_column, args.box_column)
        else:
            data_m = data
        info = {"model": name, "text_model": text_source, "dataset": args.dataset, "split": data_m.split,
                "skipped_images": data_m.skipped, "class_names_source": source}
        report, ctx = evaluate_model(encoder, text, names, templates, data_m.images, data_m.labels, metrics,
                                     args.methods, data_m.masks, options, args.batch_size, args.seed, info=info)
        folder = out if len(args.model) == 1 else out / slug(name)
        reports[name] = write_outputs(report, ctx, folder, slug(name) if len(args.model) > 1 else "", class_names=names)
        print(f"{name}: {folder / 'report.json'}")
    if len(args.model) > 1:
        _write_comparison(reports, out)
    return 0


def _write_comparison(reports: dict, out: Path) -> None:
    from ..figures import perturbation_curves, roar_curves

    roar = {slug(k): r["metrics"]["roar"] for k, r in reports.items() if "accuracy" in r["metrics"].get("roar", {})}
    if roar:
        roar_curves(roar, out / "roar.png")
    pert = {slug(k): {m: r["metrics"][m] for m in ("deletion", "insertion") if m in r["metrics"]}
            for k, r in reports.items()}
    if any(pert.values()):
        perturbation_curves(pert, out / "deletion_insertion.png")
    attacks = {r["metrics"]["robust_attack"].get("name", "PGD") for r in reports.values()
               if "robust_attack" in r["metrics"]}
    robust = f"robust top-1 ({'; '.join(sorted(attacks))})" if attacks else "robust top-1"
    lines = ["# Model comparison", "", f"| model | text tower | zero-shot top-1 | {robust} |", "|---|---|---|---|"]
    for k, r in reports.items():
        m = r["metrics"]
        top1 = m.get("zeroshot_top1")
        rob = ", ".join(f"{e}: {v:.3f}" for e, v in m.get("robust_top1", {}).items())
        lines.append(f"| `{k}` | `{r.get('text_model')}` | {'n/a' if top1 is None else f'{top1:.3f}'} | {rob or 'n/a'} |")
    lines += ["", "Per-model reports: " + ", ".join(f"[{slug(k)}]({slug(k)}/report.md)" for k in reports), ""]
    (out / "comparison.md").write_text("\n".join(lines))
