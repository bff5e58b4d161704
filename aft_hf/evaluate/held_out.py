"""Whether an evaluation measures the split a model was trained on.

An AFT model evaluated on its own training split reports numbers that are not comparable with other
models' held-out results (its robust accuracy especially), and nothing in the numbers shows it. A
model folder written by ``aft-hf train`` carries its training config (``aft_config.yaml``), so the
evaluation can compare its data with the training data and say so in the report, and from there
on the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ..constants import CONFIG_FILE, OVERLAP_KEY

__all__ = ["OVERLAP_KEY", "training_data_of", "training_overlap"]


def training_data_of(model: str) -> Optional[dict]:
    """The ``data`` section of the training config a model carries: a local folder's ``aft_config.yaml``, or the
    one of a Hub model already in the local cache (nothing is downloaded). None when there is none."""
    path = Path(model).expanduser() / CONFIG_FILE
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
    return data if isinstance(data, dict) else None


def _reference(dataset: Optional[str], data_dir: Optional[str]) -> Optional[str]:
    """What names the data: the folder of an ``imagefolder`` load, else the dataset (Hub id, folder, builtin)."""
    return data_dir if dataset == "imagefolder" and data_dir else dataset


def _same_data(a: Optional[str], b: Optional[str]) -> bool:
    """The same Hub id or spelling (``./x/`` is ``x``), or one existing local folder spelled two ways."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    if a.rstrip("/").removeprefix("./") == b.rstrip("/").removeprefix("./"):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def training_overlap(training_data: Optional[dict], dataset: str, split: Optional[str],
                     data_dir: Optional[str] = None) -> Optional[str]:
    """A one-line warning when ``dataset`` / ``split`` (as evaluated) is the split the model was trained on
    (``training_data``: the ``data`` section of its training config); None otherwise or when unknown."""
    data = training_data or {}
    trained = _reference(data.get("dataset"), data.get("data_dir"))
    if not split or split != data.get("split", "train") or not _same_data(trained, _reference(dataset, data_dir)):
        return None
    shown = _reference(dataset, data_dir)
    shown = Path(shown).name if Path(shown).expanduser().exists() else shown  # a report may be published: no local path
    return (f"not held out: split '{split}' of '{shown}' is the split this model was trained "
            "on, so these images may include its training images and the numbers do not compare with other models' "
            "held-out results; evaluate on another split")
