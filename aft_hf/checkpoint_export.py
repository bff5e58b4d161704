"""A training checkpoint as a model folder: what ``final/`` is, for any step of a run.

A checkpoint (``<output_dir>/checkpoints/step_N/``) holds accelerate's training state, which
``from_pretrained``, ``aft-hf evaluate``, ``explain``, ``push`` and the VLM graft cannot read. To
measure a run part-way (is step 2000 already robust?) or publish an earlier step, the checkpoint's
weights are loaded into the encoder its saved config describes and written by the same
``export_pretrained`` as ``final/``. The folder also records the step (``aft_checkpoint.json``), and
the model card says that the run's schedule went on past it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Union

import torch

from .card import hub_id_of
from .checkpointing import CheckpointError, Progress, check_checkpoint, list_checkpoints
from .config import TrainConfig, load_config
from .constants import CHECKPOINT_EXPORT_FILE, CONFIG_CHANGES_FILE, CONFIG_FILE, PROGRESS_FILE
from .files import run_relative
from .lora import apply_lora, save_adapter
from .model import ImageEncoder, export_pretrained, load_image_encoder
from .outputs import check_output_dir

__all__ = ["export_checkpoint", "find_checkpoint"]
logger = logging.getLogger(__name__)


def find_checkpoint(path: Union[str, Path]) -> tuple[Path, Progress]:
    """A checkpoint folder as given, or the newest whole checkpoint of a run folder; checked, with its progress."""
    path = Path(path).expanduser()
    if (path / PROGRESS_FILE).is_file():
        return path, check_checkpoint(path)
    found, damage = list_checkpoints(path), ""
    for candidate in reversed(found):
        try:
            return candidate, check_checkpoint(candidate)
        except CheckpointError as e:
            damage = damage or f" (the newest: {e})"
            logger.warning("%s: skipped, the checkpoint before it is exported", e)
    why = ("does not exist" if not path.exists() else
           f"has only damaged checkpoints under {path / 'checkpoints'}{damage}" if found else
           f"is neither a checkpoint (no {PROGRESS_FILE}) nor a run folder with checkpoints/")
    raise CheckpointError(f"'{path}' {why}: give a folder such as <output_dir>/checkpoints/step_00000500, or the run's "
                          "output_dir for its newest checkpoint")


def _saved_config(checkpoint: Path, progress: Progress) -> TrainConfig:
    """The checkpoint's config, its relative model path read from the training run's working directory."""
    if not (checkpoint / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no {CONFIG_FILE} (written before aft_hf saved configs): "
                              "its model cannot be rebuilt")
    cfg = load_config(str(checkpoint / CONFIG_FILE))
    if not Path(cfg.model.name_or_path).expanduser().exists():
        cfg.model.name_or_path = run_relative(cfg.model.name_or_path, progress.working_dir)
    return cfg


def _unwrapped(key: str) -> str:
    """A weight's name without wrapper levels: ``_orig_mod`` (a compiled module) anywhere, ``module`` (DDP) in front."""
    parts = key.split(".")
    return ".".join(p for i, p in enumerate(parts) if p != "_orig_mod" and not (i == 0 and p == "module"))


def _load_weights(encoder: ImageEncoder, checkpoint: Path) -> None:
    files = sorted(checkpoint.glob("model*.safetensors")) or sorted(checkpoint.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"checkpoint {checkpoint} holds no model weights (model.safetensors)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    state = {_unwrapped(k): v for k, v in state.items()}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit the model its config names "
                              f"({len(missing)} missing, {len(unexpected)} unexpected weights, e.g. "
                              f"{(missing or unexpected)[0]}): was the base model changed since?")


def export_checkpoint(checkpoint: Union[str, Path], out: Union[str, Path], overwrite: bool = False) -> Path:
    """Write the model of ``checkpoint`` (a checkpoint folder, or a run folder for its newest one) to ``out`` as
    ``final/`` would be written at that step: ``from_pretrained``-loadable, with its ``aft_config.yaml`` and, for a
    LoRA run that saves adapters, ``adapter/``. ``out`` must be new or empty, or (``overwrite``) an aft_hf folder."""
    path, progress = find_checkpoint(checkpoint)
    out = check_output_dir(out, overwrite=overwrite, inputs=[path], option="--out")
    cfg = _saved_config(path, progress)
    m = cfg.model
    encoder = load_image_encoder(m.name_or_path, m.revision, m.output_normalize, m.attn_implementation,
                                 embedding=m.embedding, image_size=m.image_size, feature_layer=m.feature_layer)
    base = encoder.frozen_copy() if cfg.lora.r > 0 else None
    if cfg.lora.r > 0:
        apply_lora(encoder.vision, cfg.lora)
    _load_weights(encoder, path)
    extra = {CONFIG_FILE: (path / CONFIG_FILE).read_text(),
             CHECKPOINT_EXPORT_FILE: json.dumps({"step": progress.step, "max_steps": cfg.optim.max_steps,
                                                 "checkpoint": path.name, "working_dir": progress.working_dir},
                                                indent=2) + "\n"}
    if progress.config_changes:
        extra[CONFIG_CHANGES_FILE] = json.dumps(progress.config_changes, indent=2)

    def write_adapter(folder: Path) -> None:
        save_adapter(encoder.vision, base.vision, cfg.lora, folder / "adapter", base_model=hub_id_of(m.name_or_path))

    return export_pretrained(encoder, out, extra_files=extra, revision=m.revision,
                             write_extra=write_adapter if base is not None and cfg.lora.save_adapter else None)
