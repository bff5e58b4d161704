"""What an explanation runs on: image files gathered from files and folders, one label per image,
and short column labels for the models compared (used by ``aft-hf explain``, usable from Python)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from .targets import ExplainError

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def listed_images(folder: Path) -> Optional[list[Path]]:
    """The images a ``folder/metadata.jsonl`` (or ``metadata.csv``) lists (its ``file_name`` column, in its order), or
    None when the folder has no such file. That is the ``datasets`` imagefolder layout (``aft-hf world sample``
    writes it): masks, figures and anything else in the folder are not its images."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        if (folder / "metadata.csv").is_file():
            rows = _metadata_rows(folder)
            if not rows or any(not (r.get("file_name") or "").strip() for r in rows):
                raise ExplainError(f"{folder / 'metadata.csv'} needs a file_name column naming each row's image")
            return [folder / r["file_name"] for r in rows]
        return None
    files = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ExplainError(f"{meta} line {number} is not a JSON object with a file_name: every row of an "
                               "imagefolder's metadata.jsonl names its image")
        files.append(folder / row["file_name"])
    return files


def collect_images(paths: Sequence[str], max_images: Optional[int] = None,
                   exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files from files and folders: a folder with a ``metadata.jsonl`` gives the images it lists
    (:func:`listed_images`), any other folder every image file under it (searched recursively, sorted).

    ``exclude``: files never taken from a folder (the figure a previous run wrote into it).
    """
    files: list[Path] = []
    skip = {Path(e).resolve() for e in exclude}
    for p in map(Path, paths):
        listed = listed_images(p) if p.is_dir() else None
        if listed is not None:
            files += [f for f in listed if f.resolve() not in skip]
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.resolve() not in skip)
        elif p.is_file():
            files.append(p)
        else:
            raise ExplainError(f"image path '{p}' does not exist")
    if not files:
        raise ExplainError(f"no image files found in {', '.join(paths)}")
    if max_images is not None and max_images < 1:
        raise ExplainError(f"max_images must be >= 1 (or None for all), got {max_images}")
    return files if max_images is None else files[:max_images]


def _metadata_rows(folder: Path) -> list[dict]:
    """The rows of ``folder/metadata.jsonl`` or ``folder/metadata.csv`` (the imagefolder conventions), [] when none."""
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        rows = []
        for line in meta.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return [r for r in rows if isinstance(r, dict)]
    meta = folder / "metadata.csv"
    if meta.is_file():
        with meta.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    return []


def _metadata_class_names(folder: Path, cache: dict) -> dict:
    """``file_name`` -> its class name from the folder's metadata (``metadata.jsonl`` or ``.csv``, the imagefolder
    conventions that ``aft-hf world sample`` writes): its ``class_name``, else a ``label`` that is a name (not a
    number); None for a listed file without either. {} when there is no metadata."""
    if folder not in cache:
        names: dict = {}
        for row in _metadata_rows(folder):
            if "file_name" not in row:
                continue
            name, label = row.get("class_name"), row.get("label")
            if not (isinstance(name, str) and name.strip()):
                name = label if isinstance(label, str) and label.strip() and not label.strip().isdigit() else None
            names[str(Path(row["file_name"]))] = name
        cache[folder] = names
    return cache[folder]


def default_label(file: Path, cache: dict) -> str:
    """The class name the metadata of the image's folder or the two above gives it (``class_name``, or a ``label``
    that is a name), else the folder name (underscores to spaces), as for an ``ImageFolder`` tree ``cat/1.jpg``.
    An image the metadata lists without a name (integer labels only) is labelled by its folder with a warning."""
    for folder in [file.parent, *file.parent.parents][:3]:
        try:
            names = _metadata_class_names(folder, cache)
            key = str(file.relative_to(folder))
        except ValueError:
            continue
        if names.get(key):
            return names[key]
        if key in names and ("warned", folder) not in cache:
            cache[("warned", folder)] = True
            logger.warning("the metadata in %s gives no class name for %s (a class_name column, or labels that are "
                           "names): labelled '%s' after its folder; give --labels", folder, key,
                           file.parent.name.replace("_", " "))
    return file.parent.name.replace("_", " ")


def image_labels(files: Sequence[Path], labels: Optional[Sequence[str]]) -> list[str]:
    """One label for all images, one per image, or (none given) each image's :func:`default_label`."""
    if not labels:
        cache: dict = {}
        return [default_label(f, cache) for f in files]
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
