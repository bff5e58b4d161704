"""Training images from ``datasets``: a Hub id (streamed or not), a local imagefolder, or a builtin.

Images are decoded by us, not by ``datasets`` (the column is cast to ``Image(decode=False)``),
so one corrupt or unreadable file is skipped and counted instead of ending the run. A skipped
sample is replaced by the next readable one, which keeps every batch full (and DDP in step).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..config import DataConfig
from .images import DECODE_ERRORS, ImageModeError, preprocess
from ..errors import AftError

logger = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 100


class DataError(AftError, RuntimeError):
    """The data set cannot be used; the message says why and what to do."""


def _load_hub_or_folder(cfg: DataConfig, token: Optional[str]):
    from .synthetic import resolve_builtin_dataset

    name, data_dir = resolve_builtin_dataset(cfg.dataset), cfg.data_dir
    if name not in ("imagefolder",) and Path(name).is_dir():
        name, data_dir = "imagefolder", name
    kwargs = dict(split=cfg.split, streaming=cfg.streaming)
    if name == "imagefolder":
        if not data_dir or not Path(data_dir).is_dir():
            raise DataError(f"imagefolder needs data.data_dir pointing to a folder of images, got {data_dir!r}")
        try:
            return datasets.load_dataset("imagefolder", data_dir=data_dir, **kwargs)
        except ValueError as e:  # e.g. 'Instruction "train" corresponds to no data!'
            raise DataError(f"no images for split '{cfg.split}' in the folder '{data_dir}': {e}") from e
    try:
        return datasets.load_dataset(name, cfg.config_name, token=token, **kwargs)
    except (ConnectionError, OSError) as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false") or \
            os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = ("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so Hub datasets cannot be reached; "
                "use a local imagefolder (data.dataset: imagefolder, data.data_dir: ...)"
                if offline else
                "check the id and your network; for a gated dataset such as ILSVRC/imagenet-1k accept its "
                "terms on the Hub and log in (`hf auth login`) or set HF_TOKEN")
        if "/" not in name and not Path(name).exists():
            hint += f"; there is no local folder named '{name}' either"
        raise DataError(f"could not load dataset '{cfg.dataset}': {str(e).rstrip('.')}. {hint}") from e


def load_image_dataset(cfg: DataConfig, token: Optional[str] = None):
    """The raw split with its image column undecoded (``datasets.Dataset`` or ``IterableDataset``)."""
    ds = _load_hub_or_folder(cfg, token)
    columns = ds.column_names if ds.column_names is not None else list((ds.features or {}).keys())
    if cfg.image_column not in columns:
        raise DataError(
            f"dataset '{cfg.dataset}' has no column '{cfg.image_column}' (columns: {', '.join(columns)}); "
            "set data.image_column")
    ds = ds.select_columns([cfg.image_column])
    if isinstance(ds.features[cfg.image_column], datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    if cfg.max_samples is not None:
        ds = ds.take(cfg.max_samples) if cfg.streaming else ds.select(range(min(cfg.max_samples, len(ds))))
    return ds


def _decode_or_none(value, size: int) -> Optional[torch.Tensor]:
    try:
        return preprocess(value, size)
    except (*DECODE_ERRORS, ImageModeError) as e:
        where = value.get("path") if isinstance(value, dict) else None
        logger.warning("skipping unreadable image%s: %s", f" '{where}'" if where else "", e)
        return None


class DecodedImages(Dataset):
    """Map-style view: item i is (pixels, skipped), the first readable image at or after i."""

    def __init__(self, hf_dataset: datasets.Dataset, column: str, size: int):
        self.ds, self.column, self.size = hf_dataset, column, size

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        for skipped in range(min(MAX_CONSECUTIVE_FAILURES, len(self.ds))):
            pixels = _decode_or_none(self.ds[(index + skipped) % len(self.ds)][self.column], self.size)
            if pixels is not None:
                return pixels, skipped
        raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images from index {index}: check the data")


class StreamedImages(IterableDataset):
    """Streaming view: yields (pixels, skipped) where skipped counts the bad images just before."""

    def __init__(self, hf_dataset: datasets.IterableDataset, column: str, size: int):
        self.ds, self.column, self.size = hf_dataset, column, size

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        skipped = 0
        for example in self.ds:
            pixels = _decode_or_none(example[self.column], self.size)
            if pixels is None:
                skipped += 1
                if skipped >= MAX_CONSECUTIVE_FAILURES:
                    raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images: check the data")
                continue
            yield pixels, skipped
            skipped = 0


def collate_images(batch: list) -> dict:
    """Stack pixels; sum the skipped counts so the trainer can log them."""
    pixels, skipped = zip(*batch)
    return {"pixel_values": torch.stack(pixels), "skipped": torch.tensor(sum(skipped))}


def build_dataloader(
    cfg: DataConfig,
    image_size: int,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    skip_examples: int = 0,
    token: Optional[str] = None,
) -> DataLoader:
    """A DataLoader of ``{'pixel_values', 'skipped'}`` batches.

    Map-style data comes back unsharded (``accelerator.prepare`` shards it and makes the order
    seedable and resumable). Streamed data is split across processes here (the dataloader
    must then *not* go through ``prepare``), shuffled with a buffer, and fast-forwarded by
    ``skip_examples`` on resume (exact with ``num_workers: 0``).
    """
    raw = load_image_dataset(cfg, token=token)
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=batch_size, collate_fn=collate_images, num_workers=cfg.num_workers,
                  pin_memory=torch.cuda.is_available(), drop_last=True, persistent_workers=cfg.num_workers > 0)
    if isinstance(raw, datasets.IterableDataset):
        from datasets.distributed import split_dataset_by_node

        stream = raw.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        if skip_examples:
            stream = stream.skip(skip_examples)
        return DataLoader(StreamedImages(stream, cfg.image_column, image_size), **common)
    if len(raw) < batch_size * world_size:
        raise DataError(
            f"dataset '{cfg.dataset}' has {len(raw)} images, fewer than one global batch "
            f"({batch_size * world_size}); lower optim.batch_size or add data")
    return DataLoader(DecodedImages(raw, cfg.image_column, image_size), shuffle=True, generator=generator, **common)
