"""Batches of images across the processes of an ``accelerate launch``: which process computes which
batch, with which seed, and how the results come back together. Used by ``aft-hf benchmark`` and by
``aft-hf evaluate`` (its ``zeroshot`` and ``robust`` metrics).

Batch ``b`` (items ``b*B .. (b+1)*B``) belongs to process ``b % P``. The randomness of a batch's work
(the attacks' random starts) is seeded by (seed, b, budget) through :func:`batch_seed`, never by a
generator carried from batch to batch, so a batch gives the same per-image results whichever process
runs it and however many processes there are. Every process then receives every batch's record, in
batch order, each once (checked): the numbers computed from them equal a one-process run's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

import torch

from .errors import EvaluationError

T = TypeVar("T")


def batch_seed(seed: int, batch: int, budget: int = 0) -> int:
    """The seed of batch ``batch``'s attack at the ``budget``-th budget (budgets sorted ascending)."""
    return (seed * 1_000_003 + batch) * 101 + budget


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def batch_bounds(batch: int, batch_size: int, n: int) -> tuple[int, int]:
    """Items ``start .. stop`` of batch ``batch`` out of ``n``."""
    start = batch * batch_size
    return start, min(start + batch_size, n)


def launched_processes() -> int:
    """Processes of the launch this one belongs to (``WORLD_SIZE`` set by accelerate launch / torchrun; 1 without)."""
    world = os.environ.get("WORLD_SIZE", "1")
    return int(world) if world.isdigit() and int(world) > 0 else 1


def make_accelerator(device: str = "auto"):
    """An Accelerator (one process, or this rank of an ``accelerate launch``); ``cpu`` when asked or no GPU."""
    from accelerate import Accelerator

    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(cpu=cpu)


@dataclass(frozen=True)
class Shard:
    """This process's place among ``count`` processes; one process (the default) owns every batch."""

    index: int = 0
    count: int = 1
    all_gather: Optional[Callable[[list], list]] = field(default=None, compare=False, repr=False)
    """Every process's list, concatenated in process order (``accelerate.utils.gather_object``)."""

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise EvaluationError(f"process {self.index} of {self.count}: the index must lie in 0..{self.count - 1}")
        if self.count > 1 and self.all_gather is None:
            raise EvaluationError("a shard of several processes needs the all-gather that brings their results "
                                  "together")

    @classmethod
    def of(cls, accelerator) -> "Shard":
        """The shard of this rank of ``accelerator`` (an ``accelerate.Accelerator``)."""
        from accelerate.utils import gather_object

        return cls(accelerator.process_index, accelerator.num_processes, gather_object)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def batches(self, total: int) -> list[int]:
        """This process's batches out of ``total``: ``b`` with ``b % count == index``."""
        return list(range(self.index, total, self.count))

    def gather(self, records: list) -> list:
        """Every process's ``records`` (picklable; tensors on the CPU), concatenated in process order."""
        return list(records) if self.count == 1 else list(self.all_gather(list(records)))


def in_batch_order(records: Sequence[dict], total: int, what: str) -> list[dict]:
    """``records`` (dicts with a ``batch`` index) sorted by batch; refuses a batch missing or given twice."""
    records = sorted(records, key=lambda r: r["batch"])
    got = [r["batch"] for r in records]
    if got != list(range(total)):
        raise EvaluationError(f"{what}: gathered batches {got}, expected 0..{total - 1} each once")
    return records


def map_batches(n: int, batch_size: int, compute: Callable[[int, int, int], T], shard: Optional[Shard] = None,
                what: str = "batches") -> list[T]:
    """``compute(b, start, stop)`` for this process's batches of ``n`` items; the results of every batch of
    every process, in batch order (the same list on every process)."""
    shard = shard or Shard()
    total = num_batches(n, batch_size)
    mine = [{"batch": b, "value": compute(b, *batch_bounds(b, batch_size, n))} for b in shard.batches(total)]
    return [r["value"] for r in in_batch_order(shard.gather(mine), total, what)]


__all__ = ["Shard", "batch_bounds", "batch_seed", "in_batch_order", "launched_processes", "make_accelerator",
           "map_batches", "num_batches"]
