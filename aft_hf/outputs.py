"""Output folders that aft_hf writes, and the one rule for replacing them.

Every folder the package builds as a whole (an export ``final/``, a Hub folder, a converted
checkpoint, the demo's output) carries a marker file, :data:`MARKER`, naming what wrote it
(``explain``, ``evaluate`` and ``world`` write named files into ``--out`` and add no marker). ``--overwrite``
replaces only a folder with that marker; any other non-empty folder is refused, so a mistyped
``--out`` can never delete a user's files. No command replaces its own input or a folder above it.

A folder is built in a temporary sibling (:func:`staging_dir`) and moved into place at the end
(:func:`replace_dir`), so a failed run leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Union

from .constants import VERSION as __version__
from .errors import AftError
from .files import respect_umask

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
    folder (``config.json``) is refused too (``aft-hf push`` would upload the reports with the model)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise AftError(f"{option} '{path}' is a file, not a folder")
    if results and (target / "config.json").is_file():
        raise AftError(f"{option} '{path}' holds a model (config.json): its results would be uploaded with the model "
                       "by `aft-hf push`; write them to another folder")
    parent = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise AftError(f"{option} '{path}': '{parent}' is a file, so no folder can be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AftError(f"{option} '{path}': '{parent}' is not writable")


__all__ = ["MARKER", "OutputError", "check_output_dir", "check_output_folder", "discard", "is_marked", "replace_dir",
           "staging_dir", "write_marker"]
