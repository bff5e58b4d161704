"""Which weights a benchmark folder measured, so that a resumed run never mixes two models' results.

A run records, before a model's first batch, the hash of its image tower (:func:`aft_hf.files.tower_weights_sha256`)
and of the text tower that builds its zero-shot classifier (:func:`text_tower_sha256`) in
``OUT/state/<model>/weights.json``. A later run with the same command reads every saved batch and ``result.json``
back instead of recomputing them, so if the folder behind ``--model`` or ``--text-model`` was retrained or
replaced in between, the report and card would mix the old weights' numbers with the new ones' under one name.
The resumed run hashes what it loads and refuses other weights. (What the datasets hold is checked with the
run's settings: :attr:`aft_hf.benchmark.wds.WdsDataset.content_sha256`.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

from ..files import WEIGHTS_HASH_KEY, hash_tensors, tower_weights_sha256
from .errors import BenchmarkError
from .runner import BATCH_FILES, read_json

WEIGHTS_FILE = "weights.json"
"""A model's state-folder file naming the weights its saved batches and results were measured on."""
TEXT_HASH_KEY = "text_tower_sha256"
"""The field of ``weights.json`` holding :func:`text_tower_sha256`."""


def text_tower_sha256(text: torch.nn.Module) -> str:
    """SHA-256 of a text tower's weights (names, shapes, float32 values) and its tokenizer's vocabulary: what its
    class embeddings depend on besides the class names and templates."""
    h = hashlib.sha256()  # position_ids: a buffer some transformers versions save and others do not
    hash_tensors(h, (item for item in sorted(text.state_dict().items()) if not item[0].endswith("position_ids")))
    vocab = getattr(getattr(text, "tokenizer", None), "get_vocab", dict)()
    h.update(json.dumps(sorted(vocab.items())).encode())
    return h.hexdigest()


def fingerprint(encoder, text) -> dict:
    """What :func:`check_same_weights` compares: the image tower's hash (the one ``push`` checks a card against) and
    the text tower's."""
    return {WEIGHTS_HASH_KEY: tower_weights_sha256(encoder.vision.state_dict()), TEXT_HASH_KEY: text_tower_sha256(text)}


def measured_weights(state: Path) -> Optional[dict]:
    """The hashes that the saved work in a model's state folder was measured on (a field is absent when unknown), or
    None when the folder holds no saved work (nothing to protect: a run that stopped before its first batch). A
    folder written before ``weights.json`` existed names the image tower in its ``result.json`` files."""
    results = [r for f in sorted(state.glob("*/result.json")) if (r := read_json(f)) is not None]
    if not results and not any(state.glob(f"*/{BATCH_FILES}")):
        return None
    recorded = read_json(state / WEIGHTS_FILE) or {}
    hashes = {recorded.get(WEIGHTS_HASH_KEY)} | {r.get(WEIGHTS_HASH_KEY) for r in results}
    hashes.discard(None)
    if len(hashes) > 1:
        raise BenchmarkError(f"'{state}' holds results measured on {len(hashes)} different weights: delete it to "
                             "measure the model again")
    measured = {WEIGHTS_HASH_KEY: hashes.pop()} if hashes else {}
    return measured | ({TEXT_HASH_KEY: recorded[TEXT_HASH_KEY]} if recorded.get(TEXT_HASH_KEY) else {})


def check_same_weights(model: str, text_model: str, state: Path, measured: Optional[dict], now: dict) -> None:
    """A one-line :class:`BenchmarkError` when the saved work in ``state`` was measured on other weights than ``now``
    (:func:`fingerprint` of the towers just loaded)."""
    for key, what in ((WEIGHTS_HASH_KEY, f"{model}"), (TEXT_HASH_KEY, f"the text tower of {model} ({text_model})")):
        then = (measured or {}).get(key)
        if then is not None and then != now[key]:
            raise BenchmarkError(f"{what} has changed since this folder measured it (weights sha256 {then[:12]}... "
                                 f"then, {now[key][:12]}... now), so its saved results are not this model's: benchmark "
                                 f"it into another --out, or delete '{state}' to measure it again")


__all__ = ["TEXT_HASH_KEY", "WEIGHTS_FILE", "check_same_weights", "fingerprint", "measured_weights",
           "text_tower_sha256"]
