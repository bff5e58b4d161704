"""Small file helpers shared across the package: file hashes, the image tower's weights hash, umask modes,
strict JSON written atomically."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from huggingface_hub.utils.sha import sha_fileobj


def run_relative(value: str, working_dir: Optional[str]) -> str:
    """A relative local path saved by a training run (``--data.dataset ws``), as that run meant it: joined to the
    run's ``working_dir`` when the folder is there; ``value`` unchanged for Hub ids, ``builtin:``/``local:`` names,
    absolute paths, or an unknown working directory."""
    if not working_dir or ":" in value or Path(value).expanduser().is_absolute() or not (Path(working_dir) / value).exists():
        return value
    return str(Path(working_dir) / value)


def sha256_file(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, streamed (huggingface_hub's helper, the one the Hub uses for LFS files)."""
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


# --------------------------------------------------------------------------- the image tower's weights hash

TOWER_PREFIXES = ("vision_model.", "visual_projection.")
"""Parameter names of the image tower, the same in ``CLIPModel``, ``CLIPVisionModelWithProjection`` and
``CLIPVisionModel`` (the text tower and ``logit_scale`` are not part of what evaluate measures)."""
WEIGHTS_HASH_KEY = "weights_sha256"
"""The report field holding :func:`tower_weights_sha256` of the encoder that was measured."""


def _tower_keys(names: Iterable[str]) -> dict[str, str]:
    """{name in the hash: name in the state}: the image tower's weights under one naming, whether the
    state holds a whole model (``vision_model.*``, ``visual_projection.*``) or is a tower whose parameters
    sit at the top level (a SigLIP vision model in memory). position_ids are buffers that some
    transformers versions save and others do not: not weights."""
    names = [n for n in names if not n.endswith("position_ids")]
    prefixed = [n for n in names if n.startswith(TOWER_PREFIXES)]
    if prefixed:
        return {n.removeprefix(TOWER_PREFIXES[0]): n for n in sorted(prefixed)}
    return {n: n for n in sorted(names) if not n.startswith(("text_model.", "text_projection.", "logit_"))}


def tower_weights_sha256(state: Mapping[str, "object"]) -> str:
    """SHA-256 of the image tower's weights: names, shapes and float32 values, in name order.

    The same number for the model in memory (``encoder.vision.state_dict()``) and for an exported
    folder (:func:`folder_weights_sha256`), whatever the class or the saved dtype (fp16 and bf16
    widen to float32 exactly), so a report can name the weights it measured and ``push`` can check it.
    """

    keys = _tower_keys(state)
    if not keys:
        raise ValueError("no image-tower weights (vision_model.*) to hash")
    h = hashlib.sha256()
    hash_tensors(h, ((name, state[key]) for name, key in keys.items()))
    return h.hexdigest()


def hash_tensors(h: "hashlib._Hash", named: Iterable[tuple[str, "object"]]) -> None:
    """Feed ``h`` each (name, tensor) in the given order: the name, the shape and the float32 values (fp16 and bf16
    widen exactly), so the same weights give the same bytes whatever their dtype or device."""
    import torch

    for name, t in named:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return []


def folder_weights_sha256(folder: Union[str, Path]) -> Optional[str]:
    """:func:`tower_weights_sha256` of the weights saved in an exported folder (None: no weight file).

    Reads only the image tower's tensors (safetensors), so a full CLIPModel's text tower is not loaded.
    """
    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        return None
    state: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                for key in _tower_keys(sf.keys()).values():
                    state[key] = sf.get_tensor(key)
        else:
            import torch

            loaded = torch.load(f, map_location="cpu", weights_only=True)
            state.update({k: loaded[k] for k in _tower_keys(loaded).values()})
    return tower_weights_sha256(state)


# --------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (/proc on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def respect_umask(root: Union[str, Path]) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir``/``open`` would (0777/0666 less the umask).

    ``tempfile.mkdtemp`` makes private 0700 folders and safetensors writes 0600 files, whatever the
    umask; a model folder must be readable by whoever the umask lets read it (a teammate, a serving
    process), as ``save_pretrained`` leaves it. Symlinks are left alone.
    """
    root = Path(root)
    mask = current_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        want = dir_mode if stat.S_ISDIR(mode) else file_mode | (mode & 0o111 & ~mask)
        if stat.S_IMODE(mode) != want:
            os.chmod(p, want)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by the strings ``"nan"``, ``"inf"``, ``"-inf"``.

    ``json.dumps`` writes bare ``NaN``/``Infinity`` by default, which no strict JSON parser reads.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Union[str, Path], value: Any) -> Path:
    """Write ``value`` as strict JSON (after :func:`json_safe`) to ``path``, atomically: a temporary file in the
    same folder renamed into place, so a kill never leaves half a file (a resume reads these). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
