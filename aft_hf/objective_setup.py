"""Building the configured objective at start-up: the services an objective may use (text towers, the training
labels' class names, prompt templates) bound to the package's evaluation code.

The objectives themselves (:mod:`aft_hf.objectives`) sit beside the config, which validates ``objective``
with them; what they need from the layers below (text towers, class names) reaches them through
:class:`~aft_hf.objectives.ObjectiveServices`, built here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import DataConfig, TrainConfig
from .model import ImageEncoder
from .objectives import Objective, ObjectiveError, ObjectiveServices, get_objective

CLASSNAMES_FILE = "classnames.txt"
"""A data folder's class names, one per line in label order (as `aft-hf world sample` and the clip_benchmark
dataset repos write them)."""


def label_feature(data: DataConfig):
    """The feature of ``data.label_column`` of the training split; refuses a data set without that column."""
    from .data.loading import load_image_dataset, load_source
    from .evaluate.data import names_from_column

    ds = load_image_dataset(data, label_column=data.label_column)  # its label column alone: the names column is read
    named = names_from_column(load_source(data), data.label_column)  # from the whole split, as evaluate reads it
    return named or (ds.features or {}).get(data.label_column)


def _folder_class_names(data: DataConfig):
    """The names in a local data folder's ``classnames.txt``, else None."""
    from .evaluate.classnames import read_names_file

    folder = data.data_dir if data.dataset == "imagefolder" else data.dataset
    path = Path(folder) / CLASSNAMES_FILE if folder else None
    return read_names_file(str(path)) if path is not None and path.is_file() else None


def training_class_names(data: DataConfig) -> list[str]:
    """Class names of the training labels: ``data.class_names`` (a file, or ``imagenet``), else the label
    column's ClassLabel, else the data folder's ``classnames.txt``. A data set without the label column, or
    whose labels have no names, is refused in one line (the data set's features are read, no image decoded)."""
    from .evaluate.classnames import imagenet_classnames, names_from_feature, names_order_problem, read_names_file

    feature = label_feature(data)
    source = data.class_names
    if source:
        names = imagenet_classnames() if source == "imagenet" else read_names_file(source)
        if problem := names_order_problem(names, feature, "data.class_names"):
            raise ObjectiveError(f"{problem} ('{data.label_column}' of '{data.dataset}')")
        return names
    names = names_from_feature(feature) or _folder_class_names(data)
    if names is None:
        raise ObjectiveError(f"the labels in '{data.label_column}' of '{data.dataset}' have no class names (not a "
                             f"ClassLabel, no {CLASSNAMES_FILE}): set data.class_names to a file with one name per "
                             "line, or imagenet")
    return names


def training_services() -> ObjectiveServices:
    """The services of :class:`ObjectiveServices`, bound to the package's text towers, class names and templates."""
    from .evaluate.classnames import resolve_templates
    from .explain.loading import text_tower_problem
    from .explain.targets import load_text_tower

    return ObjectiveServices(text_tower=load_text_tower, class_names=training_class_names,
                             templates=resolve_templates, text_tower_problem=text_tower_problem)


def build_objective(cfg: TrainConfig, encoder: ImageEncoder, frozen: ImageEncoder, device: torch.device) -> Objective:
    """The configured objective, built once (TeCoA's class embeddings are computed here, not per step)."""
    return get_objective(cfg.objective).build(cfg, encoder, frozen, device, training_services())


__all__ = ["CLASSNAMES_FILE", "build_objective", "label_feature", "training_class_names", "training_services"]
