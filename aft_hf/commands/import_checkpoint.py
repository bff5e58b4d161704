"""``aft-hf import-checkpoint``: an open_clip image-encoder checkpoint -> a transformers CLIPModel folder."""

from __future__ import annotations

import json

from ..card import IMPORT_FILE
from ..openclip.importer import ACTIVATIONS, ARCHS, import_checkpoint


def add_subcommand(subparsers) -> None:
    """``aft-hf import-checkpoint CKPT --arch ViT-B-16 --base openai/clip-vit-base-patch16 --out converted/``."""
    p = subparsers.add_parser(
        "import-checkpoint", help="convert an open_clip image-encoder checkpoint into a transformers CLIPModel folder",
        description="Convert a released open_clip image encoder (bare, 'visual.'-prefixed, or inside a training "
                    "checkpoint dict; a local file or a Hub repo) into a full CLIPModel folder with the base model's "
                    "text tower and processor.")
    p.add_argument("checkpoint", help=".pt/.pth/.bin (read with weights_only=True) or .safetensors, or a Hub repo id "
                                      "(org/name) holding an open_clip model")
    p.add_argument("--arch", default="auto", help=f"{', '.join(ARCHS)} (add -quickgelu to state the activation) "
                                                  "or auto (read from the weights; default)")
    p.add_argument("--base", required=True, help="the CLIP it was fine-tuned from: Hub id or local folder")
    p.add_argument("--out", required=True, help="output folder (new or empty; --overwrite replaces one aft_hf wrote)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a folder written by aft_hf")
    p.add_argument("--activation", default="auto", choices=("auto",) + ACTIVATIONS,
                   help="the MLP activation the checkpoint was trained with (OpenAI-derived: quick_gelu); auto: "
                        "from --arch or an open_clip_config.json beside it, else the base's")
    p.add_argument("--filename", help="for a Hub repo: the weights file (default: open_clip's file names)")
    p.add_argument("--revision", help="for a Hub repo: branch, tag or commit")
    p.add_argument("--ignore-unexpected", action="store_true", help="drop keys that are not part of the image tower")
    p.set_defaults(func=_cli_import)


def _cli_import(args, extra) -> int:
    out = import_checkpoint(args.checkpoint, args.base, args.out, args.arch, args.ignore_unexpected,
                            overwrite=args.overwrite, activation=args.activation, filename=args.filename,
                            revision=args.revision)
    info = json.loads((out / IMPORT_FILE).read_text())
    print(f"converted {args.checkpoint} -> {out} ({info['geometry']}, activation {info['hidden_act']} "
          f"[{info['activation_source']}], ignored keys: {len(info['ignored_keys'])})")
    return 0
