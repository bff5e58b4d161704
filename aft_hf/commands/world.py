"""``aft-hf world pretrain|sample|eval``: pretrain the world's CLIP, write world samples, evaluate a world CLIP."""

from __future__ import annotations

import json

import torch

from ..outputs import check_output_folder
from ..world.config import CLI_FIELDS, PretrainConfig
from ..world.dataset import WorldConfig, WorldError, write_imagefolder
from ..world.pretrain import pretrain
from ..world.storage import load_world_clip, load_world_config, save_world_clip
from ..world.zeroshot import evaluate_zero_shot


def _cli_pretrain(args, extra) -> int:
    check_output_folder("--out", args.out)  # before minutes of pretraining, not when saving
    overrides = {name: getattr(args, name) for name in CLI_FIELDS if getattr(args, name) is not None}
    base = PretrainConfig().to_dict()
    if args.image_size is not None:
        base["world"]["image_size"] = args.image_size
    cfg = PretrainConfig.from_dict({**base, **overrides})
    model, tokenizer, results = pretrain(cfg, progress=True)
    out = save_world_clip(model, tokenizer, cfg, results, args.out)
    summary = {k: results[k] for k in ("accuracy", "colour_accuracy", "shape_accuracy", "num_images", "train_seconds")}
    print(json.dumps({"out": str(out), **summary}, indent=2))
    return 0


def _check_count(n: int) -> None:
    if n < 1:
        raise WorldError(f"-n/--num-images must be >= 1, got {n}")


def _cli_sample(args, extra) -> int:
    _check_count(args.num_images)
    check_output_folder("--out", args.out, results=True)
    cfg = load_world_config(args.model).world if args.model else WorldConfig()
    print(write_imagefolder(args.out, args.num_images, seed=args.seed, cfg=cfg))
    return 0


def _cli_eval(args, extra) -> int:
    _check_count(args.num_images)
    model, tokenizer, cfg = load_world_clip(args.model)
    torch.set_num_threads(cfg.threads)
    print(json.dumps(evaluate_zero_shot(model, tokenizer, cfg.world, args.num_images, args.seed), indent=2))
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``aft-hf world pretrain|sample|eval``."""
    p = subparsers.add_parser("world", help="the synthetic ground-truth world: pretrain its CLIP, write samples, evaluate")
    sub = p.add_subparsers(dest="world_command", required=True)
    pre = sub.add_parser("pretrain", help="pretrain a CLIPModel in the world (defaults rebuild the shipped base)")
    pre.add_argument("--out", required=True, help="output folder (save_pretrained + training_config.json + SHA256SUMS)")
    pre.add_argument("--image-size", type=int, default=None,
                     help=f"image side in pixels, a multiple of --patch-size (default {WorldConfig().image_size})")
    for name in CLI_FIELDS:
        typ = float if name == "lr" else int
        pre.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                         help=f"default {getattr(PretrainConfig(), name)}")
    pre.set_defaults(func=_cli_pretrain)
    model_help = ("world CLIP: builtin:world-clip, a folder from `aft-hf world pretrain`, or an AFT fine-tune of one "
                  "(a folder exported by `aft-hf train` or `aft-hf demo`)")
    sam = sub.add_parser("sample", help="write world images, masks and metadata.jsonl as an imagefolder")
    sam.add_argument("--out", required=True, help="output folder: images/, masks/, metadata.jsonl")
    sam.add_argument("-n", "--num-images", type=int, default=16, help="images to write (default 16)")
    sam.add_argument("--seed", type=int, default=2,
                     help="world seed (default 2; 0 and 1 are the base's training/eval streams)")
    sam.add_argument("--model", default=None, help="take the world settings from this " + model_help)
    sam.set_defaults(func=_cli_sample)
    ev = sub.add_parser("eval", help="zero-shot accuracy (overall, colour, shape) of a world CLIP on held-out images")
    ev.add_argument("--model", default="builtin:world-clip", help=model_help)
    ev.add_argument("-n", "--num-images", type=int, default=1000, help="held-out images (default 1000)")
    ev.add_argument("--seed", type=int, default=2, help="world seed of the held-out images (default 2; 0 and 1 "
                                                       "are the base's training/eval streams)")
    ev.set_defaults(func=_cli_eval)
