"""Which weights a benchmark folder measured, so that a resumed run never mixes two models' results.

A run records the image tower's weights hash (:func:`aft_hf.files.tower_weights_sha256`) of each model in
``OUT/state/<model>/weights.json`` before its first batch. A later run with the same command reads every
saved batch and ``result.json`` back instead of recomputing them, so if the folder behind ``--model`` was
retrained or replaced in between, the report and card would mix the old weights' numbers with the new
ones' under one name (and one hash). The resumed run hashes the model it loads and refuses a different one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ..files import WEIGHTS_HASH_KEY, tower_weights_sha256
from .errors import BenchmarkError
from .runner import BATCH_FILES, read_json

WEIGHTS_FILE = "weights.json"
"""A model's state-folder file naming the weights its saved batches and results were measured on."""


def measured_weights(state: Path) -> Optional[str]:
    """The tower weights hash that the saved work in a model's state folder was measured on, or None when
    the folder holds no saved work (nothing to protect: a run that stopped before its first batch) or was
    written before the hash was recorded per model and names none in its ``result.json`` files."""
    results = [r for f in sorted(state.glob("*/result.json")) if (r := read_json(f)) is not None]
    if not results and not any(state.glob(f"*/{BATCH_FILES}")):
        return None
    recorded = read_json(state / WEIGHTS_FILE) or {}
    hashes = {recorded.get(WEIGHTS_HASH_KEY)} | {r.get(WEIGHTS_HASH_KEY) for r in results}
    hashes.discard(None)
    if len(hashes) > 1:
        raise BenchmarkError(f"'{state}' holds results measured on {len(hashes)} different weights: delete it to "
                             "measure the model again")
    return hashes.pop() if hashes else None


def check_same_weights(model: str, state: Path, measured: Optional[str], weights: Mapping[str, object]) -> str:
    """The hash of ``weights`` (the model just loaded); a one-line :class:`BenchmarkError` when the saved work
    in ``state`` was measured on other weights."""
    now = tower_weights_sha256(weights)
    if measured is not None and measured != now:
        raise BenchmarkError(f"{model} has changed since this folder measured it (image-tower weights sha256 "
                             f"{measured[:12]}... then, {now[:12]}... now), so its saved results are not this "
                             f"model's: benchmark it into another --out, or delete '{state}' to measure it again")
    return now


__all__ = ["WEIGHTS_FILE", "check_same_weights", "measured_weights"]
