"""``aft-hf export-openclip``: a transformers CLIP folder -> an open_clip state dict (safetensors)."""

from __future__ import annotations

from ..openclip.exporter import export_open_clip
from ..openclip.importer import ARCHS


def add_subcommand(subparsers) -> None:
    """``aft-hf export-openclip FOLDER --out FILE.safetensors [--arch ViT-B-16] [--vision-only]``."""
    p = subparsers.add_parser(
        "export-openclip", help="write a transformers CLIP folder as an open_clip state dict (safetensors)",
        description="Write an exported or converted CLIP folder as an open_clip state dict: the whole CLIP for a "
                    "full CLIPModel (plus an open_clip model config JSON beside it), the image tower "
                    "(model.visual.state_dict()) otherwise. Prints the open_clip call that loads it.")
    p.add_argument("folder", help="a CLIPModel or CLIPVisionModelWithProjection folder (e.g. out/final)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--arch", default="auto", help=f"{', '.join(ARCHS)} (checked against the folder) or auto")
    p.add_argument("--vision-only", action="store_true", help="write only the image tower, even of a full CLIPModel")
    p.add_argument("--overwrite", action="store_true", help="replace a file that export-openclip wrote")
    p.set_defaults(func=_cli_export)


def _cli_export(args, extra) -> int:
    result = export_open_clip(args.folder, args.out, args.arch, args.vision_only, args.overwrite)
    what = "whole CLIP" if result["full"] else "image tower (model.visual.state_dict())"
    print(f"wrote {result['file']} ({what}, {'QuickGELU' if result['quick_gelu'] else 'GELU'})"
          + (f" and {result['config_file']}" if result["config_file"] else "") + "; load it with:\n" + result["load"])
    return 0
