"""Output folders that aft_hf writes, and the one rule for replacing them.

Every folder the package builds as a whole (an export ``final/``, a Hub folder, a converted
checkpoint, the demo's output) carries a marker file, :data:`MARKER`, naming what wrote it
(``explain``, ``evaluate`` and ``world`` write named files into ``--out`` and add no marker). ``--overwrite``
replaces only a folder with that marker; any other non-empty folder is refused, so a mistyped
``--out`` can never delete a user's files. No command replaces its own input or a folder above it.

``explain`` and ``evaluate`` may be run again into the same ``--out`` (:func:`results_folder`): each run lists
what it wrote in :data:`RESULTS_MANIFEST`, and a later run removes, once it has finished, what the earlier one
wrote and it did not rewrite, so the folder never mixes two runs; files aft_hf did not write are left alone.

A folder is built in a temporary sibling (:func:`staging_dir`) and moved into place at the end
(:func:`replace_dir`), so a failed run leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .constants import VERSION as __version__
from .errors import AftError
from .files import respect_umask

logger = logging.getLogger(__name__)

MARKER = ".aft_hf_output"
"""Marker file in every folder written by aft_hf (JSON: writer, aft_hf version, time)."""

PathLike = Union[str, Path]


class OutputError(AftError, ValueError):
    """An output path that cannot be (re)written safely; the message says what to do."""


def write_marker(folder: PathLike, writer: str) -> Path:
    """Mark ``folder`` as written by aft_hf (``writer``: e.g. ``"aft-hf push --dry-run"``)."""
    path = Path(folder) / MARKER
    path.write_text(json.dumps({"writer": writer, "aft_hf_version": __version__,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return path


def is_marked(folder: PathLike) -> bool:
    """Whether ``folder`` holds the aft_hf marker (so aft_hf may replace it)."""
    return (Path(folder) / MARKER).is_file()


def check_output_dir(out: PathLike, overwrite: bool = False, inputs: Iterable[Optional[PathLike]] = (),
                     option: str = "--out", input_files: Iterable[Optional[PathLike]] = ()) -> Path:
    """Check that ``out`` may be written; returns it resolved. Raises :class:`OutputError` otherwise.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a folder that
    carries :data:`MARKER`. Refused: an existing file, any other non-empty folder, a path that is
    one of ``inputs`` or ``input_files``, contains one, or lies inside one of ``inputs`` (folders read).
    """
    out = Path(out).expanduser().resolve()
    for given, is_folder in [(g, True) for g in inputs] + [(g, False) for g in input_files]:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if out == src or out in src.parents:
            raise OutputError(f"{option} '{out}' is or contains the input '{src}': choose a separate folder")
        if is_folder and src in out.parents:
            raise OutputError(f"{option} '{out}' lies inside the input '{src}': choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} '{out}' is an existing file, not a folder: choose another path")
    if out.is_dir() and any(out.iterdir()):
        results_writer = _manifest(out).get("writer")
        if results_writer and not is_marked(out):
            raise OutputError(f"{option} '{out}' holds the results of `{results_writer}`, which this would delete: "
                              "choose an empty or new folder")
        if not overwrite:
            raise OutputError(f"{option} '{out}' exists and is not empty (pass --overwrite to replace a folder "
                              "that aft_hf wrote)")
        if not is_marked(out):
            raise OutputError(f"{option} '{out}' was not written by aft_hf (no {MARKER} marker): refusing to "
                              "replace it even with --overwrite; choose an empty or new folder")
    return out


def staging_dir(final: PathLike) -> Path:
    """A new empty folder next to ``final`` (same file system, so the final move is a rename)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))


def replace_dir(tmp: PathLike, final: PathLike) -> Path:
    """Move the fully written ``tmp`` to ``final``; an existing ``final`` (already checked) is replaced.

    A reader never sees a half-written folder: the old folder is renamed aside first and removed last.
    The folder gets the modes the umask gives (``mkdtemp`` made it private, safetensors writes 0600).
    """
    tmp, final = Path(tmp), Path(final)
    respect_umask(tmp)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def discard(tmp: PathLike) -> None:
    """Remove a staging folder made by :func:`staging_dir` (after a failure)."""
    shutil.rmtree(tmp, ignore_errors=True)


def check_output_folder(option: str, path: str, results: bool = False) -> None:
    """Raise :class:`AftError` in one line when ``path`` cannot be an output folder: it is a file, or the closest
    of its parents that exists is a file or not writable. ``results``: the folder receives reports, so a model's
    folder (``config.json``) is refused too (``aft-hf push`` would upload the reports with the model), and a training
    run's (``train --overwrite`` replaces the whole folder)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise AftError(f"{option} '{path}' is a file, not a folder")
    if results and (target / "config.json").is_file():
        raise AftError(f"{option} '{path}' holds a model (config.json): its results would be uploaded with the model "
                       "by `aft-hf push`; write them to another folder")
    if results and ((target / "final" / "config.json").is_file() or (target / "checkpoints").is_dir()):
        raise AftError(f"{option} '{path}' holds a training run (final/ or checkpoints/): a later `aft-hf train "
                       "--overwrite` of it would delete these results; write them to another folder")
    parent = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise AftError(f"{option} '{path}': '{parent}' is a file, so no folder can be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AftError(f"{option} '{path}': '{parent}' is not writable")


RESULTS_MANIFEST = ".aft_hf_results.json"
"""What the last ``explain`` / ``evaluate`` run wrote into a results folder (JSON: writer, time, entries)."""


def _touched_since(path: Path, since: float) -> bool:
    if path.is_dir() and not path.is_symlink():
        return path.stat().st_mtime >= since or any(p.stat().st_mtime >= since for p in path.rglob("*"))
    return path.lstat().st_mtime >= since


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _manifest(out: Path) -> dict:
    """The results manifest of ``out`` ({} when there is none or it cannot be read)."""
    try:
        manifest = json.loads((out / RESULTS_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def check_results_owner(out: PathLike, writer: str, option: str = "--out") -> Optional[str]:
    """Refuse ``out`` when another command's results are in it: ``aft-hf evaluate`` run into ``aft-hf explain``'s
    folder would remove the maps as stale, ``aft-hf benchmark`` would replace evaluate's report.json, and the
    other way round. Cheap: commands call it before they load anything. Returns the folder's writer (None: none)."""
    earlier = _manifest(Path(out)).get("writer")
    if earlier and earlier != writer:
        raise OutputError(f"'{out}' holds the results of `{earlier}`, which `{writer}` would replace or remove: "
                          f"give another {option}")
    return earlier


def claim_results_folder(out: PathLike, writer: str) -> None:
    """For a command that keeps its own state in ``out`` (``aft-hf benchmark``): refuse another command's results
    folder, and name this one as the writer, so that other commands refuse it in turn."""
    out = Path(out)
    if check_results_owner(out, writer) is None:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS_MANIFEST).write_text(json.dumps({"writer": writer, "aft_hf_version": __version__}) + "\n")


@contextlib.contextmanager
def results_folder(out: PathLike, writer: str) -> Iterator[Path]:
    """``out``, made if needed, for a command that writes named results into it. When the block ends (also by an
    error), what this run wrote (top-level entries modified since it began) is listed in :data:`RESULTS_MANIFEST`,
    and what the previous run listed there but this one did not rewrite is removed: a three-model evaluation
    followed by a one-model one leaves no stale comparison.md or model folders. A run that fails leaves the
    earlier results it did not reach as they were."""
    out = Path(out)
    check_results_owner(out, writer)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / RESULTS_MANIFEST
    previous = _manifest(out)
    earlier = [name for name in previous.get("entries", []) if isinstance(name, str)]
    if previous.get("running"):  # a run killed before it listed what it wrote: what it touched counts as written
        started = manifest.stat().st_mtime
        earlier += [p.name for p in out.iterdir() if p.name != RESULTS_MANIFEST and _touched_since(p, started)]
    # listed already now, so that a run killed in turn leaves them for the next finished run to judge
    manifest.write_text(json.dumps({"writer": writer, "running": True, "entries": sorted(set(earlier))}) + "\n")
    since = manifest.stat().st_mtime  # the file system's own clock, not time.time()
    finished = False
    try:
        yield out
        finished = True
    finally:
        written = sorted(p.name for p in out.iterdir() if p.name != RESULTS_MANIFEST and _touched_since(p, since))
        earlier = [name for name in earlier if isinstance(name, str) and (out / name).parent == out
                   and name not in ("", ".", "..") and (out / name).exists()]
        stale = [name for name in earlier if name not in written] if finished else []
        if not finished:  # keep listing the earlier run's entries, so the next finished run removes them
            written = sorted(set(written) | set(earlier))
        for name in stale:
            _remove(out / name)
        if stale:
            logger.warning("%s: removed what an earlier run wrote there and this one did not rewrite: %s", out,
                           ", ".join(stale))
        manifest.write_text(json.dumps({"writer": writer, "aft_hf_version": __version__, "entries": written,
                                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


__all__ = ["MARKER", "OutputError", "check_output_dir", "check_output_folder", "check_results_owner",
           "claim_results_folder", "discard", "is_marked", "replace_dir", "RESULTS_MANIFEST", "results_folder",
           "staging_dir", "write_marker"]
