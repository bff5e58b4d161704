"""What of a run may leave the machine: its config and reports without the author's local paths.

Everything aft_hf uploads (the Hub folder of ``aft-hf push``, the checkpoints of
``hub.strategy checkpoint``) passes its ``aft_config.yaml`` and JSON records through
:func:`publishable_text`. Hub ids, builtin names and settings stay as they are; a local path becomes
``local:<last component>`` (``/home/me/data/world`` -> ``local:world``), so readers see that a local
folder was used, and which one, without the file system around it.

A checkpoint downloaded from the Hub is resumed by giving those paths again on the command line
(``--model.name_or_path /new/place/world-base``): :func:`matches_published` lets a resume accept a
path whose last component is the one recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .constants import CHECKPOINT_EXPORT_FILE, CONFIG_FILE, IMPORT_FILE, PROGRESS_FILE

LOCAL_PREFIX = "local:"
PATH_FIELDS = frozenset({
    "model.name_or_path", "data.dataset", "data.data_dir", "checkpoint.output_dir",
    "checkpoint.resume_from_checkpoint", "eval.eval_dataset", "eval.eval_data_dir", "eval.class_names",
    # evaluate reports and converted checkpoints
    "model", "text_model", "dataset", "data_dir", "base", "source_checkpoint",
    # a grafted VLM's aft_graft.json
    "aft_folder", "vlm",
})
"""Fields that name a model, a data set or a folder: a local path there is replaced even when relative.
(Absolute paths are replaced in any field.)"""
PUBLISHED_FILES = (CONFIG_FILE, "eval_report.json", IMPORT_FILE, PROGRESS_FILE, CHECKPOINT_EXPORT_FILE)  # working_dir
"""The files of a model folder or checkpoint that may hold local paths; each is rewritten on the way out."""


def _is_local(value: str, key: str) -> bool:
    if value.startswith(("builtin:", LOCAL_PREFIX)) or "://" in value:
        return False
    if os.path.isabs(value) or value.startswith("~") or "\\" in value:
        return True
    if key not in PATH_FIELDS and key.split(".")[-1] not in PATH_FIELDS:
        return False
    return value.startswith(".") or value.count("/") > 1 or Path(value).expanduser().exists()


def local_marker(value: str) -> str:
    """``local:<last component>`` of a local path (``./`` and trailing slashes ignored)."""
    name = Path(value.rstrip("/\\").replace("\\", "/")).name or value
    return f"{LOCAL_PREFIX}{name}"


def publishable(data: Any, key: str = "") -> Any:
    """``data`` (a config or report, nested dicts and lists) with every local path replaced by its marker."""
    if isinstance(data, dict):
        return {k: publishable(v, f"{key}.{k}" if key else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [publishable(v, key) for v in data]
    if isinstance(data, str) and _is_local(data, key):
        return local_marker(data)
    return data


def publishable_text(name: str, text: str) -> str:
    """The content of a :data:`PUBLISHED_FILES` file, as it may be uploaded."""
    if name.endswith((".yaml", ".yml")):
        return yaml.safe_dump(publishable(yaml.safe_load(text)), sort_keys=False)
    return json.dumps(publishable(json.loads(text)), indent=2) + "\n"


def rewrite_for_upload(folder: Path) -> list[Path]:
    """Rewrite the :data:`PUBLISHED_FILES` under ``folder`` in place; returns those that changed.

    A file is replaced, never edited, so a hard link to a checkpoint file (the snapshot of
    ``hub.strategy checkpoint``) leaves the checkpoint itself untouched.
    """
    changed = []
    for path in sorted(p for name in PUBLISHED_FILES for p in Path(folder).rglob(name) if p.is_file()):
        text = path.read_text()
        new = publishable_text(path.name, text)
        if new != text:
            mode = path.stat().st_mode
            path.unlink()
            path.write_text(new)
            os.chmod(path, mode & 0o777)
            changed.append(path)
    return changed


def matches_published(saved: Any, current: Any) -> bool:
    """Whether a value read from a published config (``local:<name>``) stands for ``current``: a local path
    whose last component is ``<name>``. Any other pair matches only when equal."""
    if isinstance(saved, str) and saved.startswith(LOCAL_PREFIX) and isinstance(current, str) \
            and not current.startswith(LOCAL_PREFIX):
        return local_marker(current) == saved
    return saved == current


__all__ = ["LOCAL_PREFIX", "PATH_FIELDS", "PUBLISHED_FILES", "local_marker", "matches_published", "publishable",
           "publishable_text", "rewrite_for_upload"]
