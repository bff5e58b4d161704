"""World CLIP folders: writing one, recognising one, and loading its model and world settings.

A world CLIP is a full ``CLIPModel`` folder whose world settings can be found in one of two ways:
a ``training_config.json`` (written by ``aft-hf world pretrain``: the shipped base and any re-run),
or an ``aft_config.yaml`` whose ``model.name_or_path`` names a world CLIP (an AFT fine-tune of one,
exported by ``aft-hf train`` or ``aft-hf demo``). Builtin names (``builtin:world-clip``) are resolved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import torch
import yaml

from ..constants import CLIP_MEAN, CLIP_STD, WORLD_CLIP_DIR
from ..constants import CONFIG_FILE as AFT_CONFIG_FILE
from ..model import resolve_builtin_model
from .checksums import write_checksums
from .config import PretrainConfig
from .dataset import WorldError

BASE_DIR = WORLD_CLIP_DIR
"""The shipped base model (a full ``CLIPModel`` folder), ``builtin:world-clip``."""
TRAINING_CONFIG_FILE = "training_config.json"
_MAX_BASE_CHAIN = 8  # an AFT fine-tune of a fine-tune of ... of a world CLIP


def save_world_clip(model, tokenizer, cfg: PretrainConfig, results: dict[str, Any], out: Union[str, Path]) -> Path:
    """``save_pretrained`` the model (safetensors), tokenizer and image processor; then the config and checksums."""
    import transformers
    from transformers import CLIPImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    size = cfg.world.image_size
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                          image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
    record = {"command": cfg.command(), "config": cfg.to_dict(), "results": results,
              "class_names": cfg.world.class_names, "captions": cfg.world.captions,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "threads": cfg.threads,
              "note": ("train_seconds: wall time of the training loop on the machine that ran it; train_cpu_seconds: "
                       "CPU time of the process (the wall time grows when other jobs share the cores)")}
    (out / TRAINING_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    write_checksums(out)
    return out


def _folder(name_or_path: Union[str, Path]) -> Path:
    return Path(resolve_builtin_model(str(name_or_path)))


def load_training_record(folder: Union[str, Path] = BASE_DIR) -> dict[str, Any]:
    """The ``training_config.json`` of a pretrained world CLIP folder (config, results, versions)."""
    path = _folder(folder) / TRAINING_CONFIG_FILE
    if not path.is_file():
        raise WorldError(f"{folder} has no {TRAINING_CONFIG_FILE} (only `aft-hf world pretrain` writes one)")
    return json.loads(path.read_text())


def _aft_base(folder: Path) -> Union[str, None]:
    """The base model named in a fine-tune's ``aft_config.yaml``, if any."""
    path = folder / AFT_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise WorldError(f"{path} is not valid YAML: {e}") from e
    return (data.get("model") or {}).get("name_or_path")


def _check_geometry(folder: Path, cfg: PretrainConfig, name: str) -> None:
    """A folder said to be a world CLIP must be a full CLIPModel taking the world's image size."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WorldError(f"{name} has no config.json: not a model folder")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "clip":
        raise WorldError(f"{name} is a '{config.get('model_type')}' checkpoint; world eval needs a full CLIPModel "
                         "(image and text towers), as `aft-hf train` exports from a world CLIP base")
    size = (config.get("vision_config") or {}).get("image_size")
    if size != cfg.world.image_size:
        raise WorldError(f"{name} takes {size} px images but its world base was pretrained on {cfg.world.image_size} px")


def load_world_config(folder: Union[str, Path] = BASE_DIR) -> PretrainConfig:
    """The :class:`PretrainConfig` (and so the :class:`WorldConfig`) behind a world CLIP folder.

    Accepts a pretrained world CLIP (``training_config.json``), ``builtin:world-clip``, or an AFT
    fine-tune whose ``aft_config.yaml`` names one of those as its base (followed through chains).
    """
    name, path = str(folder), _folder(folder)
    if not path.is_dir():
        raise WorldError(f"world CLIP folder '{name}' does not exist; pass builtin:world-clip, a folder written by "
                         "`aft-hf world pretrain`, or an AFT fine-tune of one")
    for _ in range(_MAX_BASE_CHAIN):
        if (path / TRAINING_CONFIG_FILE).is_file():
            cfg = PretrainConfig.from_dict(load_training_record(path)["config"])
            if path != _folder(folder):
                _check_geometry(_folder(folder), cfg, name)
            return cfg
        base = _aft_base(path)
        if base is None:
            break
        path = _folder(base)
    raise WorldError(f"{name} is not a world CLIP: it has neither {TRAINING_CONFIG_FILE} (written by `aft-hf world "
                     f"pretrain`) nor an {AFT_CONFIG_FILE} whose model.name_or_path is a world CLIP; pass "
                     "builtin:world-clip, a pretrained world CLIP folder, or an AFT fine-tune of one")


def load_world_clip(folder: Union[str, Path] = BASE_DIR):
    """(CLIPModel in eval mode, tokenizer, PretrainConfig) of a world CLIP folder (default: the shipped base)."""
    from transformers import AutoTokenizer, CLIPModel

    cfg = load_world_config(folder)
    path = str(_folder(folder))
    model = CLIPModel.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path), cfg
