"""``aft-hf explain``: saliency-map grids (image rows x model/method columns) for one or more models.

    aft-hf explain --model openai/clip-vit-base-patch16 --model out/final --images photos/ \\
        --prompt "a photo of a {}" --labels cat dog --methods saliency gradcam attention --out figs/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.images import load_images
from ..model import ImageEncoder, ModelLoadError, load_image_encoder
from .methods import Explainer, resolve_method
from .targets import ExplainError, TextTower, check_template, image_targets, is_full_clip, load_text_tower

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def pick_device(spec: str = "auto") -> torch.device:
    """``--device``: auto, cpu, cuda, cuda:N; an unusable one is a one-line error before any loading."""
    from ..launch import resolve_device

    return resolve_device(spec)


def load_models_and_text(models: Sequence[str], text_model: Optional[str], device: torch.device,
                         need_text: bool = True) -> tuple[list[ImageEncoder], Optional[TextTower], Optional[str]]:
    """Image encoders for ``models`` and the (original) text tower: ``text_model`` or the first full-CLIP model."""
    encoders = [load_image_encoder(m).to(device).eval() for m in models]
    if not need_text:
        return encoders, None, None
    source = text_model or next((m for m in models if is_full_clip(m)), None)
    if source is None:
        raise ModelLoadError("no text tower: every --model is vision-only; pass --text-model with a full CLIP "
                             "checkpoint (the original one, e.g. openai/clip-vit-base-patch16)")
    return encoders, load_text_tower(source).to(device), source


def collect_images(paths: Sequence[str], max_images: Optional[int] = None) -> list[Path]:
    """Image files from files and folders (folders searched recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ExplainError(f"image path '{p}' does not exist")
    if not files:
        raise ExplainError(f"no image files found in {', '.join(paths)}")
    return files[:max_images] if max_images else files


def image_labels(files: Sequence[Path], labels: Optional[Sequence[str]]) -> list[str]:
    """One label for all images, one per image, or (none given) each image's folder name."""
    if not labels:
        return [f.parent.name.replace("_", " ") for f in files]
    if len(labels) == 1:
        return list(labels) * len(files)
    if len(labels) != len(files):
        raise ExplainError(f"{len(labels)} labels for {len(files)} images: give one label, or one per image "
                           f"(images in order: {', '.join(f.name for f in files[:8])}{' ...' if len(files) > 8 else ''})")
    return list(labels)


def model_labels(models: Sequence[str]) -> list[str]:
    """Short distinct column labels for models (last path part; duplicates numbered)."""
    labels: list[str] = []
    for m in models:
        base = Path(m.rstrip("/")).name or m
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("explain", help="saliency maps of CLIP models as PNG grids",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="Hub id or folder (repeat to compare models)")
    p.add_argument("--text-model", help="full CLIP checkpoint for the text tower (default: the first full-CLIP --model)")
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--prompt", default="a photo of a {}.", help="template with {} for the label")
    p.add_argument("--labels", nargs="+", help="one label for all images or one per image (default: folder names)")
    p.add_argument("--caption", help="explain similarity to this caption instead of a class prompt")
    p.add_argument("--reference-image", help="explain similarity to this image's embedding instead of text")
    p.add_argument("--methods", nargs="+", default=["saliency", "gradcam", "attention"])
    p.add_argument("--layer", help="Grad-CAM layer: default last block's layer_norm1, 'penultimate', or a module path")
    p.add_argument("--no-postprocess", action="store_true", help="keep raw maps (no abs / percentile clip / min-max)")
    p.add_argument("--max-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cli_explain)


def _cli_explain(args, extra) -> int:
    methods = [resolve_method(m) for m in args.methods]
    if args.caption is None and args.reference_image is None:
        check_template(args.prompt)
    device = pick_device(args.device)
    need_text = args.reference_image is None
    encoders, text, text_source = load_models_and_text(args.model, args.text_model, device, need_text)
    files = collect_images(args.images, args.max_images)
    labels = image_labels(files, args.labels) if need_text and args.caption is None else [""] * len(files)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown, timing, maps = None, {}, {}  # shown: the first model's images, the rows of the grid
    for name, short, encoder in zip(args.model, model_labels(args.model), encoders):
        images = load_images(files, encoder.image_size).to(device)
        if args.reference_image:
            target = image_targets(encoder, load_images([args.reference_image], encoder.image_size).to(device))
        elif args.caption is not None:
            target = text.encode([args.caption])
        else:
            target = text.encode([args.prompt.format(label) for label in labels])
        for method in methods:
            explainer = Explainer(encoder, method, postprocess=not args.no_postprocess, batch_size=args.batch_size,
                                  layer=args.layer)
            start = time.perf_counter()
            m = explainer.attribute(images, target).cpu()
            if shown is not None and m.shape[-2:] != shown.shape[-2:]:  # models of different input sizes
                m = F.interpolate(m, size=shown.shape[-2:], mode="bilinear", align_corners=False)
            key = f"{short} / {method}" if len(args.model) > 1 else method
            timing[key] = (time.perf_counter() - start) / len(files)
            maps[key] = m
        shown = images.cpu() if shown is None else shown
    from ..figures import attribution_grid

    rows = [f"{f.name}\n{lab}" if lab else f.name for f, lab in zip(files, labels)]
    png = attribution_grid(shown, maps, out / "explanations.png", row_titles=rows)
    torch.save({k: v for k, v in maps.items()}, out / "maps.pt")
    summary = {"models": args.model, "text_model": text_source, "images": [str(f) for f in files], "labels": labels,
               "target": ("reference image " + args.reference_image if args.reference_image else
                          "caption " + repr(args.caption) if args.caption is not None else "prompt " + repr(args.prompt)),
               "methods": methods, "seconds_per_image": timing, "figure": png.name, "maps": "maps.pt"}
    (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(png)
    return 0
