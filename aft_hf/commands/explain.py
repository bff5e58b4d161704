"""``aft-hf explain``: saliency-map grids (image rows x model/method columns) for one or more models.

    aft-hf explain --model openai/clip-vit-base-patch16 --model out/final --images photos/ \\
        --prompt "a photo of a {}" --labels cat dog --methods saliency gradcam attention --out figs/
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from ..data.images import image_geometry, load_images, load_readable_images
from ..explain.base import method_label
from ..explain.inputs import collect_images, image_labels, model_labels
from ..explain.loading import load_models_and_texts, pick_device
from ..explain.methods import Explainer, available_methods, resolve_method
from ..explain.options import OptionProblems
from ..explain.targets import ExplainError, check_template, image_targets
from ..outputs import check_results_owner, results_folder
from . import (
    DefaultsHelpFormatter,
    add_data_quality_arguments,
    add_device_and_out_arguments,
    add_model_arguments,
    check_data_quality_arguments,
    refuse_distributed_launch,
)

logger = logging.getLogger(__name__)
WRITER = "aft-hf explain"  # what this command's results manifest names (aft_hf.outputs.results_folder)
FIGURE = "explanations.png"


PROMPT = "a photo of a {}."
"""The class prompt of each image's label (``--prompt``)."""


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("explain", help="saliency maps of CLIP models as PNG grids",
                              description="Saliency maps of one or more CLIP models for the same images -> OUT/"
                                          "explanations.png (image rows x model/method columns), maps.pt, "
                                          "explain.json.", formatter_class=DefaultsHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders (a folder with a metadata.jsonl, "
                   "as aft-hf world sample writes: the images its file_name column lists)")
    p.add_argument("--prompt", default=PROMPT, help="template with {} for the label")
    p.add_argument("--labels", nargs="+", help="one label for all images or one per image (default: each "
                   "image's class_name in a metadata.jsonl, as aft-hf world sample writes, else its folder name)")
    p.add_argument("--caption", help="explain similarity to this caption instead of a class prompt")
    p.add_argument("--reference-image", help="explain similarity to this image's embedding instead of text")
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam", "attention"],
                   help=f"attribution methods, from: {', '.join(available_methods())}")
    p.add_argument("--layer", help="Grad-CAM layer: default last block's layer_norm1, 'penultimate', or a module path")
    p.add_argument("--no-postprocess", action="store_true", help="keep raw maps (no abs / percentile clip / min-max)")
    p.add_argument("--max-images", type=int, default=16, help="at most this many images (>= 1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward/backward pass")
    add_data_quality_arguments(p)
    add_device_and_out_arguments(p)
    p.set_defaults(func=_cli_explain)


def _check_options(args) -> tuple[list[str], list[Path], list[str], list[Path]]:
    """Every option problem at once, before any model loads; returns (methods, image files, labels)."""
    problems = OptionProblems()
    methods = [problems.call(lambda m=m: resolve_method(m)) for m in args.methods]
    if args.caption is None and args.reference_image is None:
        problems.call(lambda: check_template(args.prompt))
    problems.require(args.caption is None or args.reference_image is None,
                     "give --caption or --reference-image, not both")
    problems.file("--reference-image", args.reference_image)
    other_target = "--caption" if args.caption is not None else "--reference-image" if args.reference_image else None
    problems.require(other_target is None or (args.labels is None and args.prompt == PROMPT),
                     f"--labels and --prompt make class-prompt targets, which {other_target} replaces: leave them out")
    problems.require(not (args.layer or "").strip() or "gradcam" in methods,
                     "--layer is Grad-CAM's layer, and --methods has no gradcam: add gradcam or leave --layer out")
    problems.require(args.layer is None or bool(args.layer.strip()),
                     "--layer is empty: leave it out (the last block's layer_norm1), or give 'penultimate' or a "
                     "module path such as vision_model.encoder.layers.10")
    problems.at_least("--max-images", args.max_images, 1)
    problems.at_least("--batch-size", args.batch_size, 1)
    problems.output_folder("--out", args.out)
    check_data_quality_arguments(args, problems)
    # an --out inside an --images folder holds our own figure: never an input (a rerun would explain it)
    pool = problems.call(lambda: collect_images(args.images, None, exclude=[Path(args.out) / FIGURE])) or []
    files = pool[:max(args.max_images, 1)]
    labels = [""] * len(files)
    if files and args.reference_image is None and args.caption is None:
        labels = problems.call(lambda: image_labels(files, args.labels)) or labels
    problems.raise_if_any(ExplainError)
    # images that stand in for unreadable ones, as training fills its batch; not when labels are given per image
    spare = pool[len(files):len(files) + 4 * len(files)] if len(args.labels or ()) <= 1 else []
    return methods, files, labels, spare


def readable_files(args, files: list[Path], labels: list[str], spare: list[Path], geometry) -> tuple:
    """The first ``len(files)`` readable images of ``files`` then ``spare`` (an unreadable file's place goes to the
    next image), their labels, the unreadable files met, and the images prepared in ``geometry`` (each file read once)."""
    kept_files, kept_labels, unreadable, batches, want = [], [], [], [], len(files)
    queue = list(zip(files, labels)) + [(f, None) for f in spare]
    while queue and len(kept_files) < want:
        chunk, queue = queue[:want - len(kept_files)], queue[want - len(kept_files):]
        images, kept = load_readable_images([f for f, _ in chunk], geometry, max_bad_fraction=args.max_bad_fraction)
        batches.append(images)
        for i, (f, label) in enumerate(chunk):
            if i not in kept:
                unreadable.append(str(f))
                continue
            if label is None:  # a spare image: labelled as its own kind would have been
                label = image_labels([f], args.labels)[0] if args.reference_image is None and args.caption is None \
                    else ""
            kept_files.append(f)
            kept_labels.append(label)
    if not kept_files:
        raise ExplainError(f"none of the {len(files) + len(spare)} images could be read (see the warnings above)")
    return kept_files, kept_labels, unreadable, torch.cat(batches)


def warn_if_gradcam_is_zero(maps: torch.Tensor, model: str, layer: Optional[str]) -> Optional[str]:
    """A warning (logged and returned) when every Grad-CAM map is exactly zero, with the reason."""
    if maps.numel() == 0 or bool(maps.abs().amax() > 0):
        return None
    message = (f"Grad-CAM maps of {model} at layer '{layer or 'last_ln1'}' are all zero: the pooled output "
               "reads only the CLS token, so the patch tokens of the last block's output (and of anything after "
               "its attention) get no gradient. Leave --layer out (the last block's layer_norm1) or use "
               "--layer penultimate.")
    logger.warning(message)
    return message


def _targets(args, encoder, text, labels: list[str], device) -> torch.Tensor:
    """What each image's similarity is explained against: a reference image's embedding, a caption's, or each
    image's class prompt."""
    if args.reference_image:
        return image_targets(encoder, load_images([args.reference_image], image_geometry(encoder)).to(device))
    if args.caption is not None:
        return text.encode([args.caption])
    return text.encode([args.prompt.format(label) for label in labels])


def target_description(args) -> str:
    """The target in words, for explain.json and the figure's title."""
    if args.reference_image:
        return "reference image " + args.reference_image
    return "caption " + repr(args.caption) if args.caption is not None else "prompt " + repr(args.prompt)


def _figure(out: Path, views: dict, geometries: dict, per_model: dict, rows: list[str], title: str) -> Path:
    """The grid: one image column for all models when they prepare images alike (same resize and crop),
    else each model's maps drawn over its *own* view of the images (CLIP crops, SigLIP squashes)."""
    from ..figures import attribution_grid

    def shown(key: str) -> str:  # "model / integrated_gradients" -> "model / Integrated Gradients", as evaluate draws it
        model, _, method = key.rpartition(" / ")
        return f"{model} / {method_label(method)}" if model else method_label(method)

    if len(set(geometries.values())) == 1:
        flat = {shown(k): m for maps in per_model.values() for k, m in maps.items()}
        return attribution_grid(next(iter(views.values())), flat, out / FIGURE, row_titles=rows, title=title)
    grouped = {short: {method_label(k.split(" / ", 1)[-1]): m for k, m in maps.items()} for short, maps in per_model.items()}
    return attribution_grid(views, grouped, out / FIGURE, row_titles=rows, title=title)


def _cli_explain(args, extra) -> int:
    refuse_distributed_launch("explain", ExplainError)
    methods, files, labels, spare = _check_options(args)
    check_results_owner(args.out, WRITER)  # before the models load
    device = pick_device(args.device)
    need_text = args.reference_image is None
    encoders, texts, text_sources = load_models_and_texts(args.model, args.text_model, device, need_text,
                                                          image_size=args.image_size)
    out = Path(args.out)
    timing, maps, warnings = {}, {}, []
    views, geometries, per_model = {}, {}, {}  # per model: its own prepared images, their geometry, its maps
    first = image_geometry(encoders[0])
    files, labels, unreadable, first_images = readable_files(args, files, labels, spare, first)
    for name, short, encoder, text in zip(args.model, model_labels(args.model), encoders, texts):
        geometries[short] = image_geometry(encoder)
        images = first_images if geometries[short] == first else load_readable_images(files, geometries[short])[0]
        images = images.to(device)
        target = _targets(args, encoder, text, labels, device)
        views[short], per_model[short] = images.cpu(), {}
        for method in methods:
            explainer = Explainer(encoder, method, postprocess=not args.no_postprocess, batch_size=args.batch_size,
                                  layer=args.layer)
            start = time.perf_counter()
            m = explainer.attribute(images, target).cpu()
            if method == "gradcam":
                warnings.append(warn_if_gradcam_is_zero(m, name, args.layer))
            key = f"{short} / {method}" if len(args.model) > 1 else method
            timing[key] = (time.perf_counter() - start) / len(files)
            maps[key] = per_model[short][key] = m
    rows = [f"{f.name}\n{lab}" if lab else f.name for f, lab in zip(files, labels)]
    with results_folder(out, WRITER):  # run again into the same --out: nothing of the earlier run left over
        png = _figure(out, views, geometries, per_model, rows,
                      "explaining the similarity to the " + target_description(args))
        torch.save({k: v for k, v in maps.items()}, out / "maps.pt")
        summary = {"models": args.model, "text_model": args.text_model, "text_models": text_sources,
                   "images": [str(f) for f in files], "labels": labels, "target": target_description(args),
                   "image_geometries": {short: repr(g) for short, g in geometries.items()},
                   "methods": methods, "seconds_per_image": timing, "figure": png.name, "maps": "maps.pt",
                   "warnings": [w for w in warnings if w], "unreadable_images": unreadable}
        (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(png)
    return 0
