"""What an explanation runs on: image files gathered from files and folders, one label per image,
and short column labels for the models compared (used by ``aft-hf explain``, usable from Python)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .targets import ExplainError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


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
    if max_images is not None and max_images < 1:
        raise ExplainError(f"max_images must be >= 1 (or None for all), got {max_images}")
    return files if max_images is None else files[:max_images]


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
