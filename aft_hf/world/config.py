"""The settings of a world CLIP pretraining run, and the ``CLIPConfig`` they define."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .dataset import WorldConfig, WorldError

CLI_FIELDS = ("seed", "steps", "curriculum_steps", "batch_size", "lr", "warmup_steps", "patch_size", "vision_hidden",
              "vision_layers", "vision_heads", "vision_mlp", "eval_images", "eval_every", "threads")
"""The settings ``aft-hf world pretrain`` exposes as flags (``--vision-hidden`` for ``vision_hidden``)."""


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run; saved as ``training_config.json`` so the run can be rebuilt."""

    seed: int = 0
    """Seeds the model init and the training image stream (world seed of training images)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    # vision tower
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 256
    # text tower
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_mlp: int = 256
    projection_dim: int = 64
    # optimisation
    steps: int = 3500
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    curriculum_steps: int = 1000
    """Over the first so many steps, the share of "easy" images (no distractors, no texture, large
    target) falls linearly from 1 to 0; a small ViT learns shape from clean images far sooner."""
    # evaluation
    eval_seed: int = 1
    """World seed of the held-out evaluation images (training uses ``seed``)."""
    eval_images: int = 2000
    eval_every: int = 500
    """Evaluate on ``min(eval_images, 500)`` images every so many steps (0: only at the end)."""
    threads: int = 1
    """torch threads: 1 is fastest when other processes share the cores (2 threads ran 10x slower then)."""

    def __post_init__(self) -> None:
        if isinstance(self.world, dict):
            self.world = WorldConfig.from_dict(self.world)
        if self.seed == self.eval_seed:
            raise WorldError("eval_seed must differ from seed, or the evaluation images are training images")
        if self.world.image_size % self.patch_size:
            raise WorldError(f"image_size {self.world.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("steps", "batch_size", "eval_images"):
            if getattr(self, name) < 1:
                raise WorldError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["world"] = self.world.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise WorldError(f"unknown pretraining setting(s): {sorted(unknown)}")
        return cls(**d)

    def command(self) -> str:
        """The ``aft-hf world pretrain`` command line that rebuilds this run (non-default flags only)."""
        default = PretrainConfig()
        flags = [f"--{name.replace('_', '-')} {getattr(self, name)}" for name in CLI_FIELDS
                 if getattr(self, name) != getattr(default, name)]
        return " ".join(["aft-hf world pretrain --out DIR"] + flags)


def build_clip_config(cfg: PretrainConfig, vocab_size: int):
    """The ``CLIPConfig`` of a run: the package's one small-CLIP builder with the run's sizes."""
    from ..model import clip_config

    return clip_config(cfg.world.image_size, cfg.patch_size, cfg.projection_dim, vocab_size,
                       vision_hidden=cfg.vision_hidden, vision_layers=cfg.vision_layers, vision_heads=cfg.vision_heads,
                       vision_mlp=cfg.vision_mlp, text_hidden=cfg.text_hidden, text_layers=cfg.text_layers,
                       text_heads=cfg.text_heads, text_mlp=cfg.text_mlp, max_text_length=text_positions(cfg))


def text_positions(cfg: PretrainConfig) -> int:
    """Positions of the world text model: the caption's words, ``<bos>``, ``<eos>`` and two spare. The world
    tokenizer's ``model_max_length`` is the same number, so a longer prompt is truncated, never an error."""
    return len(cfg.world.captions[0].split()) + 4
