"""Training images from ``datasets``: a Hub id (streamed or not), any local folder, or a builtin.

Images are decoded by us, not by ``datasets`` (the column is cast to ``Image(decode=False)``),
so one corrupt or hostile file is skipped and counted instead of ending the run (any exception
from decoding, after a header check of its size). A skipped sample is replaced by the next
readable one, which keeps every batch full (and DDP in step); it is counted when it is drawn, once per
epoch, never when a search for a replacement passes over it. The share of skipped samples is
bounded by ``data.max_bad_fraction``.

A streamed epoch is fast-forwarded on resume by the number of *records read* (unreadable ones
included), so a resumed run sees exactly the samples an uninterrupted one would have seen. A
map-style epoch is one seeded permutation (:class:`EpochSampler`) that a resume enters at the same
*record* (images already drawn in the epoch, all processes together), not the same batch count: a
resume with another batch size, accumulation or process count neither repeats nor skips an image.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, Optional, Union

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..config import DataConfig
from .errors import DataError
from .images import ImageGeometry, ImageLimits, preprocess
from .quality import BadSamples
from .sources import load_source

logger = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 100

__all__ = ["DataError", "build_dataloader", "load_image_dataset", "collate_images", "DecodedImages",
           "StreamedImages", "StreamLoader", "EpochSampler", "epoch_position", "resume_position",
           "stream_positions"]

# Kept for callers of the earlier name (evaluate used it).
_load_hub_or_folder = load_source


def load_image_dataset(cfg: DataConfig, token: Optional[str] = None, label_column: Optional[str] = None):
    """The raw split with its image column undecoded (``datasets.Dataset`` or ``IterableDataset``), and
    ``label_column`` too when given (an objective that needs labels): a data set without it is refused."""
    ds = load_source(cfg, token)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"dataset '{cfg.dataset}' has several splits ({', '.join(ds)}); set data.split")
    columns = ds.column_names if ds.column_names is not None else list((ds.features or {}).keys())
    if cfg.image_column not in columns:
        raise DataError(
            f"dataset '{cfg.dataset}' has no column '{cfg.image_column}' (columns: {', '.join(columns)}); "
            "set data.image_column")
    if label_column and label_column not in columns:
        raise DataError(
            f"dataset '{cfg.dataset}' has no label column '{label_column}' (columns: {', '.join(columns)}), and the "
            "objective needs labels: use class folders, a label column (data.label_column) or metadata.jsonl")
    ds = ds.select_columns([cfg.image_column] + ([label_column] if label_column else []))
    if isinstance(ds.features[cfg.image_column], datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    if cfg.max_samples is not None:
        ds = ds.take(cfg.max_samples) if cfg.streaming else ds.select(range(min(cfg.max_samples, len(ds))))
    return ds


def limits_of(cfg: DataConfig) -> ImageLimits:
    return ImageLimits(max_pixels=cfg.max_image_pixels, max_aspect_ratio=cfg.max_aspect_ratio)


def _label(example: dict, column: Optional[str], num_classes: Optional[int]) -> tuple:
    """``(label,)`` of an example when labels are read (checked against the class count), else ``()``."""
    if column is None:
        return ()
    value = example[column]
    out_of_range = num_classes is not None and isinstance(value, int) and not 0 <= value < num_classes
    if isinstance(value, bool) or not isinstance(value, int) or out_of_range:
        raise DataError(f"label {value!r} in column '{column}' is not a class index in [0, {num_classes}): check "
                        "data.label_column and data.class_names")
    return (value,)


def _where(value) -> Optional[str]:
    return value.get("path") if isinstance(value, dict) else None


class DecodedImages(Dataset):
    """Map-style view: item i is (pixels, skipped, 1), the first readable image at or after i.

    ``skipped`` is 1 when record i itself is unreadable (it is then replaced by the next readable
    record), else 0: an unreadable file is counted when it is *drawn*, never when a scan for a
    replacement passes over it, so one epoch counts each unreadable file exactly once (and each
    epoch again), and the count travels in the batch: exact with any ``num_workers`` and across a
    resume. :attr:`bad` judges the share of unreadable draws in this process (with worker processes:
    in each worker, over the draws it made). Records found unreadable are remembered (per process
    and worker), so they are not decoded again; the replacement of an index is the same whatever
    is remembered, which keeps the order of a resumed run exact.
    """

    def __init__(self, hf_dataset: datasets.Dataset, column: str, size: Union[int, ImageGeometry],
                 limits: ImageLimits = ImageLimits(), bad: Optional[BadSamples] = None,
                 label_column: Optional[str] = None, num_classes: Optional[int] = None):
        self.ds, self.column, self.size, self.limits = hf_dataset, column, size, limits
        self.bad = bad or BadSamples()
        self.label_column, self.num_classes = label_column, num_classes  # labels: items end with the label
        self.unreadable: dict[int, tuple[Optional[str], BaseException]] = {}  # record -> (path, error)

    def __len__(self) -> int:
        return len(self.ds)

    def _decode(self, i: int):
        """(example, pixels) of record i, or None when it is unreadable (remembered in :attr:`unreadable`)."""
        if i in self.unreadable:
            return None
        example = self.ds[i]
        value = example[self.column]
        try:
            return example, preprocess(value, self.size, self.limits)
        except Exception as e:  # any decoder failure on any file: skip it, count it when it is drawn
            self.unreadable[i] = (_where(value), e)
            return None

    def __getitem__(self, index: int):
        n = len(self.ds)
        for step in range(min(MAX_CONSECUTIVE_FAILURES, n)):
            decoded = self._decode((index + step) % n)
            if step == 0 and decoded:
                self.bad.good()
            elif step == 0:
                self.bad.bad(*self.unreadable[index % n])
            if decoded:
                example, pixels = decoded
                return (pixels, int(step > 0), 1) + _label(example, self.label_column, self.num_classes)
        raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images from index {index}: check the data")

    def describe(self) -> str:
        return f"{len(self.ds)} images from {self.bad.source}; {self.bad.summary()} in this process"


class StreamedImages(IterableDataset):
    """Streaming view: yields (pixels, skipped, records) after fast-forwarding ``skip_records`` records.

    ``skipped`` counts the unreadable records just before this image and ``records`` the raw
    records consumed since the previous image (this one included), so the trainer can record how
    far into the stream it is. A read that raises (a network or shard error mid-stream) is retried
    ``retries`` times by reopening the stream at the same record; then that record is skipped.
    """

    retry_wait_s = 1.0  # first wait between retries (doubled each time); tests set it to 0

    def __init__(self, hf_dataset, column: str, size: Union[int, ImageGeometry], skip_records: int = 0,
                 limits: ImageLimits = ImageLimits(), bad: Optional[BadSamples] = None, retries: int = 3,
                 label_column: Optional[str] = None, num_classes: Optional[int] = None):
        self.ds, self.column, self.size, self.limits = hf_dataset, column, size, limits
        self.label_column, self.num_classes = label_column, num_classes
        self.skip_records, self.retries = skip_records, retries
        self.bad = bad or BadSamples()
        self.records_read = self.delivered = 0
        self.last_read = time.monotonic()

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def _records(self, start: int) -> Iterator[tuple[int, object]]:
        """(position, example) from record ``start`` on; a failed read is retried, then skipped.

        A read that raises kills a ``datasets`` iterator, so each retry reopens the stream and
        fast-forwards it (reads without decoding) to the same record: not datasets' ``.skip()``,
        which drops the epoch set by ``set_epoch`` (and the shard shuffle), so a resumed stream
        would come back in another order. After ``retries`` failures the record is counted
        unreadable and the stream reopened past it; if it fails on that record again while
        fast-forwarding, the stream cannot be read beyond it: :class:`DataError`.
        """
        position, failures, gave_up_at, iterator = start, 0, None, None
        while True:
            reached = position
            try:
                if iterator is None:
                    iterator = iter(self.ds)
                    for reached in range(position):
                        next(iterator)
                    reached = position
                example = next(iterator)
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as e:
                iterator, failures = None, failures + 1
                if gave_up_at is not None and reached == gave_up_at:
                    raise DataError(f"the stream of {self.bad.source} fails at record {gave_up_at} every time it is "
                                    f"read ({type(e).__name__}: {e}) and cannot be read past it: repair or remove "
                                    "the damaged file") from e
                if failures <= self.retries:
                    logger.warning("reading record %d of %s failed (%s: %s); retry %d of %d", reached,
                                   self.bad.source, type(e).__name__, e, failures, self.retries)
                    time.sleep(self.retry_wait_s * 2 ** (failures - 1))
                else:
                    self.bad.bad(f"record {position} of the stream", e)
                    gave_up_at, position, failures = position, position + 1, 0
                continue
            position, failures = position + 1, 0
            self.records_read, self.last_read = position, time.monotonic()
            yield position, example

    def __iter__(self) -> Iterator:
        worker = get_worker_info()
        # with worker processes each reads its own shards: the fast-forward is split evenly (approximate)
        start = self.skip_records // worker.num_workers if worker else self.skip_records
        skipped, last = 0, start
        for position, example in self._records(start):
            value = example[self.column]
            try:
                pixels = preprocess(value, self.size, self.limits)
            except Exception as e:  # any decoder failure on any file: skip it, count it
                self.bad.bad(_where(value), e)
                skipped += 1
                if skipped >= MAX_CONSECUTIVE_FAILURES:
                    raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images: check the data")
                continue
            self.bad.good()
            self.delivered += 1
            yield (pixels, skipped, position - last) + _label(example, self.label_column, self.num_classes)
            skipped, last = 0, position

    def describe(self) -> str:
        return (f"the stream of {self.bad.source}: {self.records_read} records read in this pass "
                f"({self.delivered} images delivered, {self.bad.summary()}), the last one "
                f"{time.monotonic() - self.last_read:.0f} s ago")


class StreamLoader(DataLoader):
    """DataLoader of a stream that refuses to yield nothing: an empty pass is an error, not a spin.

    A pass that starts from the beginning of the stream and fills no batch means the stream is
    empty, or smaller than one batch: raised at once as :class:`DataError` (the trainer would
    otherwise start epoch after empty epoch forever).
    """

    def __iter__(self):
        count = 0
        for batch in super().__iter__():
            count += 1
            yield batch
        if count == 0 and not self.dataset.skip_records:
            ds = self.dataset
            seen = (f" ({ds.delivered} readable images, {ds.bad.skipped} unreadable)"
                    if self.num_workers == 0 else "")
            raise DataError(f"the stream of {ds.bad.source} ended before filling one batch of {self.batch_size} "
                            f"images{seen}: check the data set and data.split, or lower optim.batch_size")


class EpochSampler(Sampler[int]):
    """A seeded permutation of ``range(n)`` per epoch (seed + epoch), entered at record ``start``.

    The order of an epoch depends on the seed and the epoch only, never on the batch geometry, so
    "the first R images of epoch e" names the same images whatever batch size, accumulation or
    number of processes drew them; :meth:`resume_at` makes the next pass start at record R (and
    only the next one: the following epochs start at 0). ``accelerate.prepare`` keeps a sampler of
    its own class and shards the batches it forms across processes (process i takes batches
    i, i + n, ...), so global micro-batch j is records ``[j * B, (j + 1) * B)`` of the permutation.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, records: int) -> None:
        self.start = max(0, min(int(records), self.n))

    def order(self, epoch: int) -> list[int]:
        """The whole permutation of ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __len__(self) -> int:
        return self.n - self.start

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        yield from self.order(self.epoch)[start:]


def epoch_position(records_per_process: Optional[list], records_in_epoch: int, num_processes_then: int) -> int:
    """Images of the current epoch already drawn by all processes together, from a checkpoint.

    ``records_per_process`` (every process's count at the save) when the checkpoint has it, else
    this process's ``records_in_epoch`` times the number of processes that wrote the checkpoint.
    """
    if records_per_process:
        return int(sum(records_per_process))
    return int(records_in_epoch) * max(1, num_processes_then)


def stream_positions(accelerator, records: int) -> list[int]:
    """Records read in this epoch by every process (a collective: call it on all of them)."""
    return accelerator.gather(torch.tensor([records], device=accelerator.device)).tolist()


def resume_position(records_per_process: Optional[list], process_index: int, num_processes: int,
                    fallback: int) -> int:
    """Where this process's stream resumes: its own saved count; ``fallback`` (whole batches) for
    checkpoints written before records were counted, or by a different number of processes
    (the stream is then split differently, and no position is exact)."""
    if records_per_process and len(records_per_process) == num_processes:
        return int(records_per_process[process_index])
    return fallback


def collate_images(batch: list) -> dict:
    """Stack pixels (and labels, when the items carry them); sum the skipped and raw-record counts so the
    trainer can log and resume."""
    pixels, skipped, records, *labels = zip(*batch)
    out = {"pixel_values": torch.stack(pixels), "skipped": torch.tensor(sum(skipped)),
           "records": torch.tensor(sum(records))}
    if labels:
        out["labels"] = torch.tensor(labels[0], dtype=torch.long)
    return out


def build_dataloader(
    cfg: DataConfig,
    image_size: Union[int, ImageGeometry],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    skip_examples: int = 0,
    token: Optional[str] = None,
    label_column: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> DataLoader:
    """A DataLoader of ``{'pixel_values', 'skipped', 'records'}`` batches.

    ``image_size``: the model's :class:`~aft_hf.data.images.ImageGeometry` (its own processor's resize and
    crop), or a side for CLIP's resize of the shortest edge + centre crop.

    Map-style data comes back unsharded (``accelerator.prepare`` shards it), in the order of an
    :class:`EpochSampler` (``loader.sampler``, which the trainer positions on resume). Streamed data is split
    across processes here (the dataloader
    must then *not* go through ``prepare``), shuffled with a buffer, and fast-forwarded by
    ``skip_examples`` raw records on resume (exact with ``num_workers: 0``). With ``label_column`` the
    batches also hold ``labels`` (class indices, each checked to lie below ``num_classes``).
    """
    raw = load_image_dataset(cfg, token=token, label_column=label_column)
    bad = BadSamples(cfg.max_bad_fraction, f"'{cfg.dataset}'")
    common = dict(batch_size=batch_size, collate_fn=collate_images, num_workers=cfg.num_workers,
                  pin_memory=torch.cuda.is_available(), drop_last=True, persistent_workers=cfg.num_workers > 0)
    if isinstance(raw, datasets.IterableDataset):
        from datasets.distributed import split_dataset_by_node

        stream = raw.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        images = StreamedImages(stream, cfg.image_column, image_size, skip_examples, limits_of(cfg), bad,
                                cfg.read_retries, label_column, num_classes)
        return StreamLoader(images, **common)
    if len(raw) < batch_size * world_size:
        raise DataError(
            f"dataset '{cfg.dataset}' has {len(raw)} images, fewer than one global batch "
            f"({batch_size * world_size}); lower optim.batch_size or add data")
    images = DecodedImages(raw, cfg.image_column, image_size, limits_of(cfg), bad, label_column, num_classes)
    return DataLoader(images, sampler=EpochSampler(len(images), seed), **common)
