"""Whether an evaluation measures the split a model was trained on.

An AFT model evaluated on its own training split reports numbers that are not comparable with other
models' held-out results (its robust accuracy especially), and nothing in the numbers shows it. A
model folder written by ``aft-hf train`` carries its training config (``aft_config.yaml``), so the
evaluation can compare its data with the training data and say so in the report, and from there
on the model card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import yaml

from ..constants import CHECKPOINT_EXPORT_FILE, CONFIG_FILE, OVERLAP_KEY, PROGRESS_FILE
from ..files import run_relative

__all__ = ["OVERLAP_KEY", "training_data_of", "training_overlap"]


def training_data_of(model: str) -> Optional[dict]:
    """The ``data`` section of the training config a model carries: a local folder's ``aft_config.yaml``, or the
    one of a Hub model already in the local cache (nothing is downloaded). None when there is none. Relative data
    paths are made absolute from the training run's working directory where it is known (:func:`_run_directory`),
    so the comparison does not depend on where the evaluation runs."""
    folder = Path(model).expanduser()
    path = folder / CONFIG_FILE
    if not path.is_file() and ":" not in model and model.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, CONFIG_FILE)
        except Exception:  # an id the Hub would refuse is no Hub model here
            cached = None
        path = Path(cached) if isinstance(cached, str) else path
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return None
    run_dir = _run_directory(folder)
    return {**data, **{key: run_relative(data[key], run_dir) for key in ("dataset", "data_dir")
                       if isinstance(data.get(key), str)}}


def _run_directory(folder: Path) -> Optional[str]:
    """The working directory of the run that trained the model in ``folder``: recorded by ``aft-hf export`` in
    ``aft_checkpoint.json``, or in the progress of the run's checkpoints beside its ``final/``."""
    candidates = [folder / CHECKPOINT_EXPORT_FILE]
    candidates += sorted((folder.parent / "checkpoints").glob(f"step_*/{PROGRESS_FILE}"), reverse=True)
    for candidate in candidates:
        try:
            value = json.loads(candidate.read_text()).get("working_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and Path(value).is_dir():
            return value
    return None


def _reference(dataset: Optional[str], data_dir: Optional[str]) -> Optional[str]:
    """What names the data: the folder of an ``imagefolder`` load, else the dataset (Hub id, folder, builtin)."""
    return data_dir if dataset == "imagefolder" and data_dir else dataset


def _same_data(a: Optional[str], b: Optional[str]) -> bool:
    """The same Hub id or spelling (``./x/`` is ``x``), or one existing local folder spelled two ways."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():  # two local folders: the same one, however spelled
        return pa.resolve() == pb.resolve()
    return a.rstrip("/").removeprefix("./") == b.rstrip("/").removeprefix("./")  # Hub ids (or a folder gone since)


_PART = re.compile(r"^\s*(?P<base>[^\[\]+]+?)\s*(?:\[(?P<a>-?\d*)(?P<ap>%?):(?P<b>-?\d*)(?P<bp>%?)\])?\s*$")


def _parts(split: str) -> Optional[list[tuple[str, Optional[tuple[str, float, float]]]]]:
    """``train[:80%]+validation`` -> [("train", ("%", 0, 80)), ("validation", None)]; None when not understood."""
    out = []
    for part in split.split("+"):
        m = _PART.match(part)
        if m is None:
            return None
        if m["a"] is None:
            out.append((m["base"], None))
            continue
        unit = "%" if m["ap"] or m["bp"] else "rows"
        if (m["ap"] and m["a"] == "") or (m["bp"] and m["b"] == ""):
            unit = "%"
        start = float(m["a"]) if m["a"] else 0.0
        end = float(m["b"]) if m["b"] else (100.0 if unit == "%" else float("inf"))
        if start < 0 or end < 0:  # counted from the end: the length is unknown here
            out.append((m["base"], ("?", 0.0, 0.0)))
        else:
            out.append((m["base"], (unit, start, end)))
    return out


def _splits_overlap(a: str, b: str) -> Optional[str]:
    """Whether two split expressions (``datasets`` slicing: ``train``, ``train[:80%]``, ``train[100:200]``,
    ``a+b``) share rows: ``"yes"`` (the same split name and slices that intersect, or no slice), ``"maybe"`` (slices
    in rows against percent, or counted from the end: not comparable without the split's size), None (no)."""
    pa, pb = _parts(a), _parts(b)
    if pa is None or pb is None:
        return "yes" if a == b else None
    found = None
    for base_a, slice_a in pa:
        for base_b, slice_b in pb:
            if base_a != base_b:
                continue
            if slice_a is None or slice_b is None:
                return "yes"
            if slice_a[0] != slice_b[0] or slice_a[0] == "?":
                found = "maybe"
            elif max(slice_a[1], slice_b[1]) < min(slice_a[2], slice_b[2]):
                return "yes"
    return found


def training_overlap(training_data: Optional[dict], dataset: str, split: Optional[str],
                     data_dir: Optional[str] = None) -> Optional[str]:
    """A one-line warning when ``dataset`` / ``split`` (as evaluated) shares (or may share) images with the split the
    model was trained on (``training_data``: the ``data`` section of its training config; slices such as
    ``train[:80%]`` are compared); None otherwise or when unknown."""
    data = training_data or {}
    trained = _reference(data.get("dataset"), data.get("data_dir"))
    trained_split = str(data.get("split", "train"))
    overlap = _splits_overlap(split, trained_split) if split else None
    if overlap is None or not _same_data(trained, _reference(dataset, data_dir)):
        return None
    shown = _reference(dataset, data_dir)
    shown = Path(shown).name if Path(shown).expanduser().exists() else shown  # a report may be published: no local path
    if overlap == "maybe":
        return (f"perhaps not held out: split '{split}' of '{shown}' and '{trained_split}', the split this model was "
                "trained on, are slices of one split that cannot be compared here (rows against percent, or counted "
                "from the end); check that they do not overlap before comparing with other models' held-out results")
    what = ("is the split this model was trained on" if split == trained_split
            else f"overlaps '{trained_split}', the split this model was trained on")
    return (f"not held out: split '{split}' of '{shown}' {what}, so these images may include its training images and "
            "the numbers do not compare with other models' held-out results; evaluate on another split")
