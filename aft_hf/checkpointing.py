"""Checkpoints that survive the machine: atomic, fsynced, self-describing, validated on resume.

A checkpoint is ``<output_dir>/checkpoints/step_<8-digit step>/``: the ``accelerator.save_state`` files
(model, optimiser, scheduler, RNG, sampler) plus

* ``progress.json``   where the run is (step, epoch, position in the epoch, images seen, ...),
* ``log_history.json`` every logged metric since the start of the run (so a resumed run's summary
  covers the whole run, not only the part after the resume),
* ``eval_history.json`` every evaluation (``eval.*``) since the start of the run, for the same reason,
* ``aft_config.yaml`` the resolved config that produced it, and ``versions.json`` the library versions.

It is written into ``.tmp_step_<8-digit step>``, every file and the folder are fsynced, then the folder is
renamed into place (and the parent fsynced): after a power cut a ``step_*`` folder is either complete
or absent. Written by hand rather than with accelerate's automatic checkpoint naming, which names
checkpoints by save count (not step) and writes in place.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from accelerate.logging import get_logger

from .constants import CONFIG_FILE, PROGRESS_FILE
from .errors import AftError
from .files import json_safe, respect_umask, write_json  # noqa: F401  (json_safe: re-exported)

logger = get_logger(__name__)
HISTORY_FILE = "log_history.json"
EVAL_HISTORY_FILE = "eval_history.json"
VERSIONS_FILE = "versions.json"
TMP_PREFIX = ".tmp_step_"


class CheckpointError(AftError, RuntimeError):
    """A checkpoint cannot be written or read back, or the output folder is not usable."""


@dataclass
class Progress:
    """Where the run is; written into every checkpoint so a resume restarts at the same sample."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    """Micro-batches this process has consumed in the current epoch."""
    skipped_images: int = 0
    images_seen_per_process: list[int] = field(default_factory=list)
    """Images each process has trained on since the start of the run (all resumes included)."""
    nonfinite_steps: int = 0
    """Optimiser steps skipped because the loss or the gradient norm was NaN/inf."""
    config_changes: list[dict] = field(default_factory=list)
    """``{"step": N, "changes": [...]}`` for every resume that was allowed to change the config."""
    records_in_epoch: int = 0
    """Raw records this process has read in the current epoch of a stream (unreadable ones included)."""
    records_per_process: Optional[list] = None
    """``records_in_epoch`` of every process at the checkpoint: a stream resumes each shard there; a
    map-style epoch resumes at their sum, the images of its permutation already drawn."""
    working_dir: Optional[str] = None
    """The working directory of the run that wrote the checkpoint: the relative paths of its saved config
    (``--data.dataset ./imgs``) are relative to it, so a resume from another directory compares them right
    (None in checkpoints written before it was recorded)."""

    @classmethod
    def from_json(cls, text: str) -> "Progress":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"step", "epoch", "batches_in_epoch"} <= set(data) \
                or set(data) - known or not all(isinstance(data[k], int) for k in ("step", "epoch", "batches_in_epoch")):
            raise ValueError(f"unexpected content {str(data)[:200]}")
        return cls(**data)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint's content (recorded next to it)."""
    import accelerate
    import datasets
    import torch
    import transformers

    from . import __version__

    return {"aft_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


# --------------------------------------------------------------------------- listing and validation


def list_checkpoints(output_dir: os.PathLike) -> list[Path]:
    """Complete checkpoints (holding ``progress.json``), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.name[5:].isdigit() and (p / PROGRESS_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def check_checkpoint(path: Path) -> Progress:
    """Read ``progress.json`` and check that every state file is whole; raise ``CheckpointError`` if not.

    Cheap: safetensors headers are checked against the file size, torch/pickle zip archives by their
    central directory (at the end of the file, so a truncated file fails); tensors are not loaded.
    """
    from safetensors import safe_open

    try:
        progress = Progress.from_json((path / PROGRESS_FILE).read_text())
        for f in sorted(path.iterdir()):
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt") as st:
                    st.keys()
            elif f.suffix in (".bin", ".pt", ".pth", ".pkl"):
                with f.open("rb") as fh:
                    is_zip = fh.read(2) == b"PK"  # torch.save's format; a legacy pickle is not checked
                if is_zip:
                    zipfile.ZipFile(f).close()
        for name in (HISTORY_FILE, EVAL_HISTORY_FILE):
            if (path / name).is_file():
                json.loads((path / name).read_text())
    except Exception as e:  # OSError, JSON/zip/safetensors errors: all mean "not usable"
        raise CheckpointError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None
    return progress


def resolve_checkpoint(spec: Optional[str], output_dir: os.PathLike) -> Optional[tuple[Path, Progress]]:
    """``latest`` -> the newest checkpoint that passes :func:`check_checkpoint` (older ones are tried
    in turn, with a warning, when newer ones are damaged); a path -> that checkpoint, or a clear error.

    Returns None for ``latest`` when there is no checkpoint at all (a fresh start).
    """
    if spec is None:
        return None
    if spec != "latest":
        path = Path(spec)
        if not (path / PROGRESS_FILE).is_file():
            from .config import ConfigError

            why = "does not exist" if not path.exists() else f"is not a complete aft_hf checkpoint (no {PROGRESS_FILE})"
            raise ConfigError([f"checkpoint.resume_from_checkpoint: '{spec}' {why}; use 'latest' or a folder under "
                               "<output_dir>/checkpoints"])
        return path, check_checkpoint(path)
    found = list_checkpoints(output_dir)
    for path in reversed(found):
        try:
            return path, check_checkpoint(path)
        except CheckpointError as e:
            logger.warning("%s: skipping it and trying the previous checkpoint", e, main_process_only=True)
    if found:
        raise CheckpointError(f"every checkpoint under {Path(output_dir) / 'checkpoints'} is damaged; start afresh "
                              "with --overwrite_output_dir (deletes them) or another output_dir")
    return None


# --------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file, then every folder bottom-up, so the rename below publishes durable content."""
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _is_disk_full(e: BaseException) -> bool:
    import errno

    text = str(e)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "os error 28" in text \
        or "No space left" in text or "StorageFull" in text


def save_checkpoint(accelerator: Accelerator, progress: Progress, output_dir: Path, total_limit: Optional[int],
                    history: Optional[list] = None, config_yaml: Optional[str] = None,
                    eval_history: Optional[list] = None) -> Path:
    """Write a checkpoint atomically (see the module docstring) and prune old ones.

    On any failure (a full disk, say) the temporary folder is removed, earlier checkpoints are left
    untouched and a :class:`CheckpointError` names the cause.
    """
    root = output_dir / "checkpoints"
    final = root / f"step_{progress.step:08d}"
    tmp = root / f"{TMP_PREFIX}{progress.step:08d}"
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / PROGRESS_FILE, asdict(progress))
            write_json(tmp / HISTORY_FILE, history or [])
            write_json(tmp / EVAL_HISTORY_FILE, eval_history or [])
            write_json(tmp / VERSIONS_FILE, library_versions())
            if config_yaml is not None:
                (tmp / CONFIG_FILE).write_text(config_yaml)
            _fsync_tree(tmp)
            _publish(tmp, final)
            if total_limit is not None:
                for old in list_checkpoints(output_dir)[:-total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(output_dir)]
        why = "the disk is full" if _is_disk_full(e) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"could not write checkpoint {final} ({why}); the temporary folder was removed and "
                              f"earlier checkpoints are kept ({', '.join(kept) or 'none'}): fix the cause and "
                              "resume with --resume_from_checkpoint latest") from e
    accelerator.wait_for_everyone()
    logger.info("checkpoint saved: %s", final, main_process_only=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a folder already there (same step saved again) is replaced last."""
    old = None
    respect_umask(tmp)  # accelerate writes model.safetensors 0600 whatever the umask
    if final.exists():
        old = final.with_name(final.name.replace("step_", TMP_PREFIX + "old_"))
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete ``.tmp_step_*`` folders left by a crash during a save (only names this module creates)."""
    root = output_dir / "checkpoints"
    stale = sorted(root.glob(TMP_PREFIX + "*")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        logger.warning("removed %s, left by an interrupted save", p, main_process_only=True)
    return stale
