"""Contrastive pretraining of a small transformers ``CLIPModel`` in the synthetic world, and zero-shot eval.

Training images are rendered on the fly (image i of the stream is ``render_sample(rng([seed, i]))``),
so the run is reproducible from its seed and never sees a held-out image (held-out sets use other
world seeds). The loss is CLIP's symmetric InfoNCE with the captions of a batch de-duplicated:
with 16 classes a batch repeats captions, and treating repeats as negatives would punish the
right answer. Image -> text is a softmax over the distinct captions; text -> image a softmax over
the batch's images with every image of that caption counted as a positive.

Zero-shot accuracy = argmax over the class captions of the cosine similarity of L2-normalised
embeddings; colour and shape accuracy score the two words of the predicted caption separately.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from huggingface_hub.utils.sha import sha_fileobj
import torch.nn.functional as F
from torch import Tensor

from ..model import CLIP_MEAN, CLIP_STD
from ..tokenizer import BOS_ID, EOS_ID, PAD_ID, build_word_tokenizer
from .dataset import WorldConfig, WorldError, generate_arrays, render_sample

BASE_DIR = Path(__file__).resolve().parent / "base"
"""The shipped base model (a full ``CLIPModel`` folder)."""
CHECKSUM_FILE = "SHA256SUMS"
TRAINING_CONFIG_FILE = "training_config.json"


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


def build_clip_config(cfg: PretrainConfig, vocab_size: int):
    """The ``CLIPConfig`` of a run (word-level ids: pad 0, bos 2, eos 3; text pools at eos)."""
    from transformers import CLIPConfig

    n_words = len(cfg.world.captions[0].split())
    clip_cfg = CLIPConfig(
        text_config=dict(hidden_size=cfg.text_hidden, intermediate_size=cfg.text_mlp, num_hidden_layers=cfg.text_layers,
                         num_attention_heads=cfg.text_heads, vocab_size=vocab_size, max_position_embeddings=n_words + 4,
                         hidden_act="quick_gelu", pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID),
        vision_config=dict(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                           image_size=cfg.world.image_size, patch_size=cfg.patch_size, hidden_act="quick_gelu"),
        projection_dim=cfg.projection_dim,
    )
    clip_cfg.vision_config.projection_dim = cfg.projection_dim  # METHOD.md section 6: the loading trap
    return clip_cfg


def to_pixel_values(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> CLIP-normalised (N, 3, H, W) float, exactly as ``ImageEncoder`` does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def class_text_embeddings(model, tokenizer, captions: list[str]) -> Tensor:
    """L2-normalised text embeddings of ``captions`` (K, D)."""
    tok = tokenizer(captions, padding=True, return_tensors="pt")
    out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(out, dim=-1)


def image_embeddings(model, pixel_values: Tensor) -> Tensor:
    """L2-normalised image embeddings (N, D) of CLIP-normalised pixels."""
    out = model.get_image_features(pixel_values=pixel_values)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(out, dim=-1)


@torch.no_grad()
def zero_shot_predict(model, tokenizer, images: np.ndarray, world: WorldConfig, batch_size: int = 256) -> np.ndarray:
    """Predicted class index of each (N, H, W, 3) uint8 image: argmax cosine over the class captions."""
    was_training = model.training
    model.eval()
    text = class_text_embeddings(model, tokenizer, world.captions)
    preds = []
    for i in range(0, len(images), batch_size):
        img = image_embeddings(model, to_pixel_values(images[i:i + batch_size]))
        preds.append((img @ text.T).argmax(-1).numpy())
    model.train(was_training)
    return np.concatenate(preds) if preds else np.empty(0, np.int64)


def accuracies(preds: np.ndarray, labels: np.ndarray, world: WorldConfig) -> dict[str, float]:
    """Overall, colour and shape accuracy (colour = label // n_shapes, shape = label % n_shapes)."""
    n_shapes = len(world.shapes)
    preds, labels = np.asarray(preds), np.asarray(labels)
    return {"accuracy": float(np.mean(preds == labels)),
            "colour_accuracy": float(np.mean(preds // n_shapes == labels // n_shapes)),
            "shape_accuracy": float(np.mean(preds % n_shapes == labels % n_shapes))}


def evaluate_zero_shot(model, tokenizer, world: WorldConfig, num_images: int = 1000, seed: int = 1) -> dict[str, float]:
    """Zero-shot accuracies on ``num_images`` held-out images of world seed ``seed``."""
    data = generate_arrays(num_images, seed, world)
    res = accuracies(zero_shot_predict(model, tokenizer, data["images"], world), data["labels"], world)
    res["num_images"] = num_images
    return res


def easy_world(world: WorldConfig) -> WorldConfig:
    """The curriculum's easy images: same vocabulary, no distractors, plain background, upper half of the sizes."""
    lo, hi = world.target_size
    return replace(world, num_distractors=(0, 0), target_size=((lo + hi) / 2, hi), noise_std=0.0, plain_background=True)


def _render_batch(cfg: PretrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    idx0 = step * cfg.batch_size
    p_easy = max(0.0, 1.0 - step / cfg.curriculum_steps) if cfg.curriculum_steps else 0.0
    easy = easy_world(cfg.world)
    samples = []
    for j in range(cfg.batch_size):
        rng = np.random.default_rng([cfg.seed, idx0 + j])
        samples.append(render_sample(rng, easy if rng.random() < p_easy else cfg.world))
    return np.stack([s.image for s in samples]), np.array([s.label for s in samples])


def contrastive_loss(img: Tensor, text: Tensor, labels: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric CLIP loss with de-duplicated captions: ``img`` (B, D), ``text`` (K, D) class captions, ``labels`` (B,)."""
    present = torch.unique(labels)
    logits = logit_scale.exp().clamp(max=100) * img @ text[present].T  # (B, P)
    targets = torch.searchsorted(present, labels)
    loss_i2t = F.cross_entropy(logits, targets)
    pos = F.one_hot(targets, len(present)).T.float()  # (P, B): images of each caption
    log_p = F.log_softmax(logits.T, dim=-1)
    loss_t2i = -((log_p * pos).sum(-1) / pos.sum(-1)).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain(cfg: PretrainConfig, progress: bool = True):
    """Train a ``CLIPModel`` from scratch in the world; returns (model, tokenizer, results dict)."""
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_word_tokenizer(cfg.world.words)
    model = CLIPModel(build_clip_config(cfg, len(tokenizer)))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    tok = tokenizer(cfg.world.captions, padding=True, return_tensors="pt")
    eval_data = generate_arrays(min(cfg.eval_images, 500), cfg.eval_seed, cfg.world) if cfg.eval_every else None
    history = []
    start, cpu_start = time.time(), time.process_time()
    bar = tqdm(range(cfg.steps), desc="pretraining world CLIP", disable=not progress)
    for step in bar:
        images, labels = _render_batch(cfg, step)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        text = F.normalize(out.pooler_output if hasattr(out, "pooler_output") else out, dim=-1)
        img = image_embeddings(model, to_pixel_values(images))
        loss = contrastive_loss(img, text, torch.from_numpy(labels), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = accuracies(zero_shot_predict(model, tokenizer, eval_data["images"], cfg.world), eval_data["labels"], cfg.world)
            history.append({"step": step + 1, "loss": loss.item(), "seconds": round(time.time() - start, 1),
                            "cpu_seconds": round(time.process_time() - cpu_start, 1), **acc})
            bar.write(json.dumps(history[-1]))
    train_seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    model.eval()
    results = evaluate_zero_shot(model, tokenizer, cfg.world, cfg.eval_images, cfg.eval_seed)
    results.update(train_seconds=round(train_seconds, 1), train_cpu_seconds=round(cpu_seconds, 1), final_loss=round(loss.item(), 4), history=history,
                   num_parameters=sum(p.numel() for p in model.parameters()),
                   vision_parameters=sum(p.numel() for n, p in model.named_parameters()
                                         if n.startswith(("vision_model", "visual_projection"))))
    return model, tokenizer, results


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


def write_checksums(folder: Union[str, Path]) -> Path:
    """Write ``SHA256SUMS`` (``sha256sum`` format) over every other file of ``folder``."""
    folder = Path(folder)
    lines = [f"{_sha256(p)}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUM_FILE]
    out = folder / CHECKSUM_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


def verify_checksums(folder: Union[str, Path]) -> list[str]:
    """Names of files whose SHA-256 differs from ``SHA256SUMS`` (or that are missing); empty when all match."""
    folder = Path(folder)
    sums = folder / CHECKSUM_FILE
    if not sums.is_file():
        raise WorldError(f"{folder} has no {CHECKSUM_FILE}")
    bad = []
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        p = folder / name
        if not p.is_file() or _sha256(p) != digest:
            bad.append(name)
    return bad


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
    record = {"command": "aft-hf world pretrain --out DIR" + _nondefault_flags(cfg),
              "config": cfg.to_dict(), "results": results, "class_names": cfg.world.class_names,
              "captions": cfg.world.captions,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "threads": cfg.threads, "note": ("train_seconds: wall time of the training loop on the machine that ran it; "
                       "train_cpu_seconds: CPU time of the process (the wall time grows when other jobs share the cores)")}
    (out / TRAINING_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    write_checksums(out)
    return out


def _nondefault_flags(cfg: PretrainConfig) -> str:
    default = PretrainConfig()
    flags = []
    for name in _CLI_FIELDS:
        if getattr(cfg, name) != getattr(default, name):
            flags.append(f"--{name.replace('_', '-')} {getattr(cfg, name)}")
    return (" " + " ".join(flags)) if flags else ""


def load_training_record(folder: Union[str, Path] = BASE_DIR) -> dict[str, Any]:
    """The ``training_config.json`` of a world CLIP folder (config, results, versions)."""
    path = Path(folder) / TRAINING_CONFIG_FILE
    if not path.is_file():
        raise WorldError(f"{folder} has no {TRAINING_CONFIG_FILE}: not a world CLIP folder")
    return json.loads(path.read_text())


def load_world_config(folder: Union[str, Path] = BASE_DIR) -> PretrainConfig:
    """The :class:`PretrainConfig` (and so the :class:`WorldConfig`) a world CLIP folder was trained with."""
    return PretrainConfig.from_dict(load_training_record(folder)["config"])


def load_world_clip(folder: Union[str, Path] = BASE_DIR):
    """(CLIPModel in eval mode, tokenizer, PretrainConfig) of a world CLIP folder (default: the shipped base)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(folder)).eval()
    return model, AutoTokenizer.from_pretrained(str(folder)), load_world_config(folder)


# --------------------------------------------------------------------------- command line

_CLI_FIELDS = ("seed", "steps", "curriculum_steps", "batch_size", "lr", "warmup_steps", "patch_size", "vision_hidden", "vision_layers",
               "vision_heads", "vision_mlp", "eval_images", "eval_every", "threads")


def _cli_pretrain(args, extra) -> int:
    overrides = {name: getattr(args, name) for name in _CLI_FIELDS if getattr(args, name) is not None}
    base = PretrainConfig().to_dict()
    if args.image_size is not None:
        base["world"]["image_size"] = args.image_size
    cfg = PretrainConfig.from_dict({**base, **overrides})
    model, tokenizer, results = pretrain(cfg, progress=True)
    out = save_world_clip(model, tokenizer, cfg, results, args.out)
    summary = {k: results[k] for k in ("accuracy", "colour_accuracy", "shape_accuracy", "num_images", "train_seconds")}
    print(json.dumps({"out": str(out), **summary}, indent=2))
    return 0


def _cli_sample(args, extra) -> int:
    from .dataset import write_imagefolder

    cfg = load_world_config(args.model).world if args.model else WorldConfig()
    print(write_imagefolder(args.out, args.num_images, seed=args.seed, cfg=cfg))
    return 0


def _cli_eval(args, extra) -> int:
    model, tokenizer, cfg = load_world_clip(args.model)
    torch.set_num_threads(cfg.threads)
    print(json.dumps(evaluate_zero_shot(model, tokenizer, cfg.world, args.num_images, args.seed), indent=2))
    return 0


def add_subcommand(subparsers) -> None:
    """``aft-hf world pretrain|sample|eval``."""
    p = subparsers.add_parser("world", help="the synthetic ground-truth world: pretrain its CLIP, write samples, evaluate")
    sub = p.add_subparsers(dest="world_command", required=True)
    pre = sub.add_parser("pretrain", help="pretrain a CLIPModel in the world (defaults rebuild the shipped base)")
    pre.add_argument("--out", required=True, help="output folder (save_pretrained + training_config.json + SHA256SUMS)")
    pre.add_argument("--image-size", type=int, default=None)
    for name in _CLI_FIELDS:
        typ = float if name == "lr" else int
        pre.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                         help=f"default {getattr(PretrainConfig(), name)}")
    pre.set_defaults(func=_cli_pretrain)
    sam = sub.add_parser("sample", help="write world images, masks and metadata.jsonl as an imagefolder")
    sam.add_argument("--out", required=True)
    sam.add_argument("-n", "--num-images", type=int, default=16)
    sam.add_argument("--seed", type=int, default=2, help="world seed (0 and 1 are the base's training/eval streams)")
    sam.add_argument("--model", default=None, help="take the world settings from this world CLIP folder")
    sam.set_defaults(func=_cli_sample)
    ev = sub.add_parser("eval", help="zero-shot accuracy (overall, colour, shape) of a world CLIP on held-out images")
    ev.add_argument("--model", default=str(BASE_DIR))
    ev.add_argument("-n", "--num-images", type=int, default=1000)
    ev.add_argument("--seed", type=int, default=2)
    ev.set_defaults(func=_cli_eval)
