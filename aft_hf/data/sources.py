"""Where a data set comes from: a Hub id, a builtin, or any local folder ``datasets`` can read.

A local folder is one of three things, told apart by what it holds:

- written by ``Dataset.save_to_disk`` (``state.json`` or ``dataset_dict.json``): ``load_from_disk``;
- parquet or arrow shards, with or without a README ``configs:`` block (how ``hf download
  --repo-type dataset`` leaves a Hub data set such as ImageNet on disk): ``load_dataset(folder)``,
  which infers the splits from the README or from the file names (``train-*.parquet``);
- webdataset ``.tar`` shards (``train-0000.tar`` ..., each sample a ``<key>.jpg`` / ``.png`` /
  ``.webp`` ... beside ``<key>.cls``, as ``hf download`` leaves a webdataset data set): read the same
  way (``datasets``' ``webdataset`` builder), then the sample's image (under the key of its
  extension) becomes ``data.image_column`` and its ``cls`` becomes ``data.label_column``;
- anything else: an image folder (``load_dataset("imagefolder", data_dir=folder)``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import datasets
from PIL import Image

from ..config import DataConfig
from ..env import datasets_offline
from .errors import DataError

logger = logging.getLogger("aft_hf.data")

TABLE_SUFFIXES = (".parquet", ".arrow")
WEBDATASET_SUFFIXES = (".tar",)
WEBDATASET_LABEL = "cls"
"""The key of a webdataset sample's class index (``<key>.cls``: the label as text)."""


def local_format(folder: Path) -> str:
    """``saved`` (save_to_disk), ``tables`` (parquet/arrow shards), ``webdataset`` (tar shards) or
    ``imagefolder``.

    Walks the folder top-down and stops at the first table or image file, so telling an image
    folder of a million files apart costs one directory listing per level, not a full scan.
    """
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return "saved"
    image_suffixes = set(Image.registered_extensions())
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # an image folder may carry its labels in metadata.parquet: that is not a table shard
        suffixes = {Path(f).suffix.lower() for f in files if not f.startswith("metadata.")}
        if suffixes & set(TABLE_SUFFIXES):
            return "tables"
        if suffixes & set(WEBDATASET_SUFFIXES):
            return "webdataset"
        if suffixes & image_suffixes:
            return "imagefolder"
    return "imagefolder"


def _pick_split(ds, cfg: DataConfig, where: str):
    """One split of a DatasetDict (``cfg.split``, slices such as ``train[:80%]`` included), or the dict itself when no
    split is asked for. A single saved ``Dataset`` is the one split it was saved as (``train`` when it has no name):
    another split name is refused and a slice applies to it, rather than the whole set being read silently."""
    if cfg.split is None:
        return ds
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({str(ds.split or "train"): ds})
    if not isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return ds
    if cfg.split in ds:
        return ds[cfg.split]
    try:  # datasets' split syntax, as load_dataset reads it: 'train[:80%]', 'train[100:200]+validation'
        parts = datasets.ReadInstruction.from_spec(cfg.split).to_absolute({k: len(v) for k, v in ds.items()})
    except (ValueError, KeyError, AssertionError, TypeError):
        parts = None
    if parts is None or isinstance(ds, datasets.IterableDatasetDict):
        raise DataError(f"{where} has no split '{cfg.split}' (splits: {', '.join(ds)}); set data.split")
    pieces = [ds[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


def _load_saved(folder: Path, cfg: DataConfig):
    """A ``save_to_disk`` folder; streamed as an iterable view when ``cfg.streaming``."""
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # a damaged folder: name it, with datasets' own reason
        raise DataError(f"could not read the save_to_disk folder '{folder}': {e}") from e
    ds = _pick_split(ds, cfg, f"the save_to_disk folder '{folder}'")
    if not cfg.streaming:
        return ds
    if isinstance(ds, datasets.DatasetDict):
        return datasets.IterableDatasetDict({k: _as_stream(v) for k, v in ds.items()})
    return _as_stream(ds)


def _as_stream(ds: datasets.Dataset) -> datasets.IterableDataset:
    # several shards, so that shard order is shuffled and processes / workers can split them
    return ds.to_iterable_dataset(num_shards=max(1, min(len(ds), 64)))


def _load_tables(folder: Path, cfg: DataConfig, what: str = "parquet/arrow"):
    """Parquet/arrow (or webdataset tar) shards; splits from the README ``configs:`` block or the file names."""
    try:
        # resolved: a relative 'parquet' or 'webdataset' is also a datasets loader name, which reads the whole
        # working directory instead of the folder
        return datasets.load_dataset(str(folder.resolve()), cfg.config_name, split=cfg.split, streaming=cfg.streaming)
    except ValueError as e:  # unknown split or config: datasets lists the known ones
        raise DataError(f"could not read the {what} folder '{folder}': {e}; set data.split / "
                        "data.config_name") from e


def _load_webdataset(folder: Path, cfg: DataConfig):
    """Webdataset tar shards, their image and ``cls`` columns named as the config expects (see the module doc)."""
    ds = _load_tables(folder, cfg, "webdataset")
    splits = ds.values() if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)) else [ds]
    features = next(iter(splits)).features or {}
    renames = {}
    if cfg.image_column not in features:
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if len(images) != 1:
            raise DataError(f"the webdataset folder '{folder}' has {'no' if not images else 'several'} image keys "
                            f"({', '.join(images or features)}): set data.image_column to the one to train on")
        renames[images[0]] = cfg.image_column
    if cfg.label_column and cfg.label_column not in features and WEBDATASET_LABEL in features:
        renames[WEBDATASET_LABEL] = cfg.label_column
    return ds.rename_columns(renames) if renames else ds


def _require_data_dir(data_dir: Optional[str]) -> None:
    if not data_dir or not Path(data_dir).is_dir():
        raise DataError(f"imagefolder needs data.data_dir pointing to a folder of images, got {data_dir!r}")


def _load_imagefolder(data_dir: Optional[str], cfg: DataConfig):
    _require_data_dir(data_dir)
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir, split=cfg.split, streaming=cfg.streaming)
    except FileNotFoundError as e:  # datasets' EmptyDatasetError: nothing at all in the folder
        raise DataError(f"the folder '{data_dir}' holds no images: {e}") from e
    except ValueError as e:  # e.g. 'Instruction "train" corresponds to no data!'
        raise DataError(f"no images for split '{cfg.split}' in the folder '{data_dir}': {e}") from e
    _report_inferred_splits(Path(data_dir), cfg.split)
    return ds


def _is_image(path: str, suffixes: set) -> bool:
    return Path(path).suffix.lower() in suffixes


def _report_inferred_splits(folder: Path, split: Optional[str]) -> None:
    """Say which splits ``datasets`` made of an image folder from its file or folder names, when it made any.

    A file or folder named ``train*``, ``test*``, ``eval*``, ``valid*`` ... makes ``datasets`` split the
    folder by name, and every image whose name matches no split is left out (30 ``photo*.png`` beside
    10 ``train_*.png`` train on 10 images). A warning names the splits and the images left out; a folder
    that splits without leaving any out (``train/`` and ``test/``) gets an info line.
    """
    from datasets.data_files import DataFilesDict, get_data_patterns

    patterns = get_data_patterns(str(folder))
    if list(patterns) == ["train"] and patterns["train"] == ["**"]:
        return  # no names matched: the whole folder is the one split 'train'
    suffixes = set(Image.registered_extensions())
    counts = {str(k): sum(_is_image(f, suffixes) for f in files)
              for k, files in DataFilesDict.from_patterns(patterns, base_path=str(folder)).items()}
    total = sum(_is_image(f, suffixes) for root, dirs, files in os.walk(folder)
                for f in files if not f.startswith((".", "__")) and not _hidden(Path(root), folder))
    unsplit = total - sum(counts.values())
    named = ", ".join(f"'{k}' ({n} images)" for k, n in counts.items())
    message = f"datasets split the folder '{folder}' by file and folder names into {named}" + (
        f"; split '{split}' reads {counts.get(split, 0)} of its {total} images" if split else "")
    if unsplit > 0:
        logger.warning("%s, and %d images whose names match no split are left out: rename or move them into "
                       "train/ (and test/) folders to train on them", message, unsplit)
    else:
        logger.info(message)


def _hidden(root: Path, folder: Path) -> bool:
    """Whether ``root`` lies in a folder that ``datasets`` ignores (hidden, or ``__``-prefixed) below ``folder``."""
    return any(part.startswith((".", "__")) for part in root.relative_to(folder).parts)


def _load_hub(name: str, cfg: DataConfig, token: Optional[str]):
    try:
        return datasets.load_dataset(name, cfg.config_name, split=cfg.split, streaming=cfg.streaming, token=token)
    except (ConnectionError, OSError) as e:
        hint = ("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so Hub datasets cannot be reached; "
                "use a local folder (data.dataset: path/to/folder)"
                if datasets_offline() else
                "check the id and your network; for a gated dataset such as ILSVRC/imagenet-1k accept its "
                "terms on the Hub and log in (`hf auth login`) or set HF_TOKEN")
        parent = Path(name).expanduser().parent
        if "/" not in name and not Path(name).exists():
            hint += f"; there is no local folder named '{name}' either"
        elif parent != Path(".") and parent.is_dir():  # 'data/trian' beside a local 'data': a mistyped folder
            hint = f"no such local folder ('{parent}' exists, '{name}' does not); as a Hub id: {hint}"
        raise DataError(f"could not load dataset '{cfg.dataset}': {str(e).rstrip('.')}. {hint}") from e


def load_source(cfg: DataConfig, token: Optional[str] = None):
    """The split ``cfg.split`` of ``cfg.dataset`` (a ``DatasetDict`` when ``cfg.split`` is None)."""
    from .synthetic import resolve_builtin_dataset

    name = resolve_builtin_dataset(cfg.dataset)
    if name == "imagefolder":
        return _load_imagefolder(cfg.data_dir, cfg)
    folder = _local_folder(name)
    if folder is None:
        return _load_hub(name, cfg, token)
    return LOADERS[local_format(folder)](folder, cfg)


def _local_folder(name: str) -> Optional[Path]:
    """The local folder ``name`` names; None for a Hub id. A path that is no folder is refused."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if folder.is_file():
        raise DataError(f"data set '{name}' is a file; give the folder that holds it")
    if name.startswith((".", "/", "~")) or name.endswith(("/", "\\")) or name.count("/") > 1:  # no Hub id looks so
        raise DataError(f"there is no folder '{name}'; give an existing folder or a Hub dataset id")
    return None


def check_source(cfg: DataConfig) -> None:
    """Refuse the path mistakes :func:`load_source` would, without reading any data: a run checks its data set
    before it spends time loading the model. Hub ids and built-in data sets are checked when they load."""
    if cfg.dataset.startswith("builtin:"):
        return
    if cfg.dataset == "imagefolder":
        _require_data_dir(cfg.data_dir)
    else:
        _local_folder(cfg.dataset)


LOADERS = {
    "saved": _load_saved,
    "tables": _load_tables,
    "webdataset": _load_webdataset,
    "imagefolder": lambda folder, cfg: _load_imagefolder(str(folder), cfg),
}
"""How each :func:`local_format` of a local folder is read: ``(folder, cfg) -> dataset``."""
