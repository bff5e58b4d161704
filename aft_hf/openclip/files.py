"""Reading checkpoint files for ``aft-hf import-checkpoint``: local files or Hub repos, with a plain
diagnosis of damaged files.

A file that cannot be read is described by what it is (a Git LFS pointer, a truncated download,
an empty file, something that is no checkpoint at all) rather than by the low-level error of the
reader (``SafetensorError``, ``OSError [Errno 22]``, an unpickling error that wrongly suggests
malicious content).
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import AftError

LFS_HEADER = b"version https://git-lfs"
"""First bytes of a Git LFS pointer file (what a clone without ``git lfs`` leaves instead of the weights)."""
HUB_CHECKPOINT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                        "open_clip_pytorch_model.bin")
"""Weights files of an open_clip model repo on the Hub, in the order open_clip itself prefers them."""
OPEN_CLIP_CONFIG = "open_clip_config.json"
READ_FROM = "_read_from"
"""Key :func:`read_open_clip_config` adds to the model_cfg it returns: the name of the file it read."""
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class ConvertError(AftError, ValueError):
    """A checkpoint could not be read or converted; the message names the problem (re-exported by aft_hf.openclip.importer)."""


def describe_unreadable(path: Path) -> Optional[str]:
    """What is wrong with a file that a reader refused, when it can be told from its bytes; else None."""
    size = path.stat().st_size
    if size == 0:
        return f"'{path}' is empty (0 bytes): download it again"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(LFS_HEADER):
        return (f"'{path}' is a Git LFS pointer ({size} bytes of text), not the weights: the repository was cloned "
                "without Git LFS. Run `git lfs pull` in the clone, or download the file itself (e.g. `hf download`)")
    if path.suffix == ".safetensors":
        if size < 8:
            return f"'{path}' is truncated ({size} bytes): download it again"
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > 100_000_000:
            return f"'{path}' is not a safetensors file (its first 8 bytes are no header length)"
        if 8 + header_len > size:
            return f"'{path}' is truncated ({size} bytes; its header alone needs {8 + header_len}): download it again"
        return _safetensors_truncation(path, header_len, size)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return f"'{path}' is a truncated or damaged PyTorch checkpoint ({size} bytes, incomplete archive): " \
                   "download or save it again"
        return None
    if head[:1] == b"\x80":  # a pickle (legacy torch.save format)
        return None
    return (f"'{path}' is not a checkpoint: neither a PyTorch (torch.save) file nor safetensors "
            f"(it starts with {head[:16]!r})")


def _safetensors_truncation(path: Path, header_len: int, size: int) -> Optional[str]:
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"'{path}' is not a safetensors file (unreadable header)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    needed = 8 + header_len + max(ends, default=0)
    if needed > size:
        return f"'{path}' is truncated ({size} of {needed} bytes): download it again"
    return None


def load_checkpoint_file(path: Union[str, Path]) -> object:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (or safetensors); anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"checkpoint '{path}' does not exist")
    problem = describe_unreadable(path)
    if problem:
        raise ConvertError(problem)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise ConvertError(f"'{path}' is a damaged safetensors file: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "truncated" in first:  # a legacy (non-zip) torch.save file cut short
            raise ConvertError(f"'{path}' is truncated ({first}): download or save it again") from None
        raise ConvertError(
            f"refused '{path}': it holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) will not unpickle ({first}). Loading it fully could run "
            "arbitrary code; re-save only the weights, e.g. "
            "torch.save(model.visual.state_dict(), 'visual.pt')") from None
    except (EOFError, OSError) as e:
        raise ConvertError(f"'{path}' is truncated or damaged ({type(e).__name__}: {e}): download or "
                                  "save it again") from None
    except RuntimeError as e:
        if "TorchScript" in str(e) or "torch.jit" in str(e):
            raise ConvertError(f"'{path}' is a TorchScript archive: load it with open_clip or torch.jit.load "
                                      "and save model.visual.state_dict() with torch.save") from None
        raise ConvertError(f"could not read '{path}': {e}") from None


def resolve_checkpoint(ref: Union[str, Path], filename: Optional[str] = None,
                       revision: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """A local file, or a Hub model repo id (``org/name`` or ``hf-hub:org/name``) downloaded with
    ``hf_hub_download`` (cached files resolve offline). Returns (local file, repo id or None)."""
    text = str(ref)
    local = Path(text).expanduser()
    if local.is_file() and not text.startswith("hf-hub:"):
        return local, None
    repo_id = text[len("hf-hub:"):] if text.startswith("hf-hub:") else text
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if local.suffix in CHECKPOINT_SUFFIXES:  # a file name, not a repo id
            raise HFValidationError(text)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConvertError(f"checkpoint '{ref}' does not exist (give a file, or a Hub repo id such as "
                                  "chs20/fare2-clip)") from None
    if local.is_dir():
        raise ConvertError(f"'{ref}' is a folder: give the checkpoint file inside it")
    names = [filename] if filename else list(HUB_CHECKPOINT_FILES)
    errors = []
    for name in names:
        try:
            return Path(_download(repo_id, name, revision)), repo_id
        except Exception as e:  # not in this repo, no network, gated: try the next name, then explain
            errors.append(f"{name}: {type(e).__name__}")
    raise ConvertError(
        f"could not get a checkpoint from the Hub repo '{repo_id}' ({'; '.join(errors)}). Offline, only files already "
        "in the Hub cache can be used; pass --filename for a weights file of another name")


def _download(repo_id: str, filename: str, revision: Optional[str]) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision)


def read_open_clip_config(checkpoint: Path, repo_id: Optional[str], revision: Optional[str] = None) -> Optional[dict]:
    """The ``model_cfg`` beside the checkpoint, if any: its own ``<name>.json`` (what ``aft-hf export-openclip``
    writes next to ``<name>.safetensors``, open_clip's custom-model format), else ``open_clip_config.json``
    (local folder or Hub repo)."""
    own = checkpoint.with_suffix(".json")
    candidate: Optional[Path] = own if own.is_file() and own != checkpoint else checkpoint.parent / OPEN_CLIP_CONFIG
    if repo_id is not None and not candidate.is_file():
        try:
            candidate = Path(_download(repo_id, OPEN_CLIP_CONFIG, revision))
        except Exception:  # the repo has none
            candidate = None
    if candidate is None or not candidate.is_file():
        return None
    try:
        config = json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg", config), dict):
        return None
    return {**config.get("model_cfg", config), READ_FROM: candidate.name}
