"""A clip_benchmark webdataset repo (Hub id or local copy) read through ``datasets``, with no image lost.

Layout (as ``clip-benchmark/wds_*`` on the Hub)::

    classnames.txt                          one class name per line, in label order
    zeroshot_classification_templates.txt   one prompt per line, the class name as {c}
    {split}/nshards.txt                     the number of shards n
    {split}/0.tar ... {split}/{n-1}.tar     members <key>.webp|png|jpg|jpeg and <key>.cls (label as text)

``datasets``' webdataset loader takes the features of the FIRST shard: when shards differ in image
type (one png, the others webp), the other shards' images silently have no column (measured with
datasets 5.2; no error at load time). So every shard is listed with ``tarfile`` first (its image type and image count),
loaded on its own, its image column renamed to ``image``, and the shards concatenated in order; the
rows are then checked against the counts of the tars. A sample without an image, a shard mixing image
types, or a count that does not match is a :class:`BenchmarkError`, never a smaller dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from ..data.images import preprocess
from ..env import hub_offline
from ..explain.targets import ExplainError, check_template
from .errors import BenchmarkError, DatasetNotHere

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class Shard:
    """One tar of the split: where it is, its image type and how many labelled images it holds."""

    relpath: str
    path: Path
    image_type: str
    images: int


@dataclass
class WdsDataset:
    """The test split of one benchmark dataset: class names, templates (``{}`` slot), shards, rows."""

    ref: str
    """As the user or the suite gave it: a Hub id or a folder."""
    hub_id: Optional[str]
    """The Hub id the numbers belong to (None for a folder that is no copy of a known Hub dataset)."""
    local_dir: Optional[str]
    split: str
    classnames: list[str]
    templates: list[str]
    shards: list[Shard]
    table: object = field(repr=False)
    """A ``datasets.Dataset`` with columns image (undecoded), cls, __key__, in shard order."""

    def __len__(self) -> int:
        return len(self.table)

    @property
    def image_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.image_type] = out.get(s.image_type, 0) + s.images
        return out

    @property
    def content_sha256(self) -> str:
        """A fingerprint of what the numbers depend on: class names, templates, each shard's name, size in bytes
        and image count, and every label. A resumed benchmark compares it, so a copy whose class names, templates,
        labels or shards changed in between (a typo fixed, images replaced) is not resumed with the old numbers.
        (A shard rewritten with other images of exactly the same byte size would pass: contents are not hashed, so
        that opening ImageNet's 6 GB of shards stays instant.)"""
        record = {"classnames": self.classnames, "templates": self.templates,
                  "shards": [[s.relpath, s.path.stat().st_size, s.images] for s in self.shards],
                  "labels": [int(v) for v in self.table["cls"]]}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def labels(self, start: int = 0, stop: Optional[int] = None) -> Tensor:
        stop = len(self) if stop is None else stop
        return torch.tensor(self.table[start:stop]["cls"], dtype=torch.long)

    def images(self, start: int, stop: int, size: int) -> Tensor:
        """Decoded images ``start:stop`` as (n, 3, size, size) in [0, 1]; an unreadable one is an error."""
        rows = self.table[start:stop]
        out = []
        for row, (key, value) in enumerate(zip(rows["__key__"], rows["image"]), start):
            if value is None:
                raise BenchmarkError(f"{self.ref}: sample '{key}' of {self.shard_of(row)} has no image")
            try:
                out.append(preprocess(value, size))
            except Exception as e:  # any decoder failure: the protocol's sample would silently change
                raise BenchmarkError(f"{self.ref}: image of sample '{key}' of {self.shard_of(row)} cannot be decoded "
                                     f"({type(e).__name__}: {e})") from None
        return torch.stack(out)

    def shard_of(self, row: int) -> str:
        """The shard (relative path) holding row ``row`` of the table, for error messages."""
        for shard in self.shards:
            if row < shard.images:
                return shard.relpath
            row -= shard.images
        return "no shard"


def _fetcher(ref: str, data_root: Optional[str]) -> tuple[Callable[[str], Optional[Path]], Optional[str],
                                                               Optional[str]]:
    """(relative path -> local file or None, hub id, local folder) for a folder, a copy under
    ``data_root`` (named like the repo, e.g. ``DIR/wds_cars``), or the Hub."""
    folder = Path(ref).expanduser()
    hub_id = None
    if not folder.is_dir():
        local = Path(data_root).expanduser() / ref.rstrip("/").split("/")[-1] if data_root else None
        if local is not None and local.is_dir():
            folder, hub_id = local, ref
        elif ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
            if local is not None and not hub_offline():  # offline, the Hub cache has it or the error says so
                logger.warning("no copy of '%s' under --data-root (%s does not exist): reading it from the Hub", ref, local)
            return _hub_fetcher(ref, missing_copy=local), ref, None
        else:
            raise BenchmarkError(f"dataset '{ref}' is neither a folder nor a Hub id (owner/name)"
                                 + (f", and '{local}' does not exist" if local is not None else ""))

    def local_file(rel: str) -> Optional[Path]:
        p = folder / rel
        return p if p.is_file() else None

    return local_file, hub_id, str(folder)


def _hub_fetcher(repo_id: str, missing_copy: Optional[Path] = None) -> Callable[[str], Optional[Path]]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(rel: str) -> Optional[Path]:
        try:
            try:
                return Path(hf_hub_download(repo_id, rel, repo_type="dataset"))
            except LocalEntryNotFoundError as e:  # offline (or no network) and not cached: not a file missing from the repo
                why = ("HF_HUB_OFFLINE is set (not in the Hub cache either)" if hub_offline() else
                       f"the Hub cannot be reached ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})")
                raise DatasetNotHere(repo_id, missing_copy, why) from None
            except EntryNotFoundError:  # the repo has no such file (optional files: nshards.txt)
                return None
        except DatasetNotHere:
            raise
        except Exception as e:  # gated, no such repo: one line that says which
            raise BenchmarkError(f"could not download '{rel}' of the dataset '{repo_id}' from the Hub "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                 + (f"there is no local copy at '{missing_copy}' either (check --data-root)"
                                    if missing_copy is not None else
                                    "offline, give a local copy with --data-root DIR (DIR/<repo name>) or a folder")) from None
    return fetch


def _lines(fetch: Callable[[str], Optional[Path]], rel: str, ref: str) -> list[str]:
    path = fetch(rel)
    if path is None:
        raise BenchmarkError(f"dataset '{ref}' has no {rel}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise BenchmarkError(f"dataset '{ref}': {rel} is empty")
    return lines


def prompt_template(template: str, ref: str = "") -> str:
    """A clip_benchmark template (``a photo of a {c}.``) as the package's (``a photo of a {}.``)."""
    if template.count("{c}") != 1:
        raise BenchmarkError(f"dataset '{ref}': template {template!r} must contain '{{c}}' once")
    escaped = template.replace("{c}", "\0").replace("{", "{{").replace("}", "}}").replace("\0", "{}")
    try:
        return check_template(escaped)
    except ExplainError as e:
        raise BenchmarkError(f"dataset '{ref}': {e}") from None


def inspect_shard(path: Path, relpath: str, ref: str) -> Shard:
    """The shard's image type and labelled-image count, from its tar headers; inconsistencies are errors."""
    samples: dict[str, set[str]] = {}
    try:
        with tarfile.open(path) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                head, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if dot:
                    samples.setdefault(f"{head}/{stem}", set()).add(ext.lower())
    except (tarfile.TarError, OSError) as e:
        raise BenchmarkError(f"dataset '{ref}': {relpath} is not a readable tar ({e})") from None
    types: dict[str, int] = {}
    for key, exts in samples.items():
        images = [e for e in exts if e in IMAGE_EXTENSIONS]
        if len(images) > 1:
            raise BenchmarkError(f"dataset '{ref}': sample '{key}' of {relpath} has several images "
                                 f"({', '.join(sorted(images))})")
        if "cls" in exts and not images:
            raise BenchmarkError(f"dataset '{ref}': sample '{key}' of {relpath} has a label but no image "
                                 f"({', '.join(sorted(exts))}); the copy is incomplete")
        if images and "cls" not in exts:
            raise BenchmarkError(f"dataset '{ref}': sample '{key}' of {relpath} has an image but no .cls label")
        if images:
            types[images[0]] = types.get(images[0], 0) + 1
    if len(types) > 1:
        raise BenchmarkError(f"dataset '{ref}': {relpath} mixes image types ({', '.join(sorted(types))}); the "
                             "datasets webdataset loader needs one type per shard: rewrite the shard")
    if not types:
        raise BenchmarkError(f"dataset '{ref}': {relpath} holds no labelled images")
    (image_type, count), = types.items()
    return Shard(relpath, path, image_type, count)


def _shard_paths(fetch: Callable[[str], Optional[Path]], local_dir: Optional[str], split: str,
                 ref: str) -> list[str]:
    nshards = fetch(f"{split}/nshards.txt")
    if nshards is not None:
        try:
            n = int(nshards.read_text().strip())
        except ValueError:
            raise BenchmarkError(f"dataset '{ref}': {split}/nshards.txt does not hold a number") from None
        return [f"{split}/{i}.tar" for i in range(n)]
    if local_dir and (Path(local_dir) / split).is_dir():
        tars = sorted((Path(local_dir) / split).glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        if tars:
            return [f"{split}/{p.name}" for p in tars]
    raise BenchmarkError(f"dataset '{ref}' has no split '{split}' ({split}/nshards.txt or {split}/*.tar)")


def _load_shard(shard: Shard, split: str):
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={split: [str(shard.path)]}, split=split)
    if shard.image_type not in ds.column_names or "cls" not in ds.column_names:
        raise BenchmarkError(f"{shard.relpath}: the datasets loader found columns {ds.column_names}, expected "
                             f"'{shard.image_type}' and 'cls'")
    ds = ds.select_columns([shard.image_type, "cls", "__key__"]).rename_column(shard.image_type, "image")
    ds = ds.cast_column("image", datasets.Image(decode=False))
    if len(ds) != shard.images:
        raise BenchmarkError(f"{shard.relpath}: the datasets loader read {len(ds)} samples but the tar holds "
                             f"{shard.images} labelled images")
    return ds


def open_wds(ref: str, split: str = "test", data_root: Optional[str] = None) -> WdsDataset:
    """Read a clip_benchmark webdataset copy (see the module docstring); every image accounted for."""
    import datasets

    fetch, hub_id, local_dir = _fetcher(ref, data_root)
    classnames = _lines(fetch, CLASSNAMES_FILE, ref)
    templates = [prompt_template(t, ref) for t in _lines(fetch, TEMPLATES_FILE, ref)]
    shards = []
    for rel in _shard_paths(fetch, local_dir, split, ref):
        path = fetch(rel)
        if path is None:
            raise BenchmarkError(f"dataset '{ref}': shard {rel} is missing (nshards.txt lists it)")
        shards.append(inspect_shard(path, rel, ref))
    table = datasets.concatenate_datasets([_load_shard(s, split) for s in shards])
    expected = sum(s.images for s in shards)
    if len(table) != expected:
        raise BenchmarkError(f"dataset '{ref}': {len(table)} rows read but the shards hold {expected} images")
    labels = table["cls"]
    ds = WdsDataset(ref, hub_id, local_dir, split, classnames, templates, shards, table)
    bad = [i for i, v in enumerate(labels) if v is None or not 0 <= int(v) < len(classnames)]
    if bad:
        raise BenchmarkError(f"dataset '{ref}': {len(bad)} labels outside 0..{len(classnames) - 1} "
                             f"({len(classnames)} class names), e.g. {labels[bad[0]]} (sample "
                             f"'{table[bad[0]]['__key__']}' of {ds.shard_of(bad[0])})")
    logger.info("%s: %d images in %d shards (%s), %d classes, %d templates", ref, len(ds), len(shards),
                ", ".join(f"{k} {v}" for k, v in ds.image_types.items()), len(classnames), len(templates))
    return ds


__all__ = ["CLASSNAMES_FILE", "IMAGE_EXTENSIONS", "Shard", "TEMPLATES_FILE", "WdsDataset", "inspect_shard",
           "open_wds", "prompt_template"]
