"""``aft-hf graft``: put an AFT-tuned vision tower into a LLaVA-style VLM checkpoint."""

from __future__ import annotations

from ..graft import graft


def add_subcommand(subparsers) -> None:
    """``aft-hf graft AFT_FOLDER --into LLAVA --out OUT [--revision R] [--overwrite]``."""
    p = subparsers.add_parser(
        "graft", help="write a VLM checkpoint (LLaVA, LLaVA-NeXT, LLaVA-OneVision) whose vision tower is an AFT model",
        description="Copy a transformers VLM checkpoint (safetensors) and overwrite its vision tower's tensors with "
                    "the AFT model's, in its own shards and dtypes; everything else stays byte for byte. "
                    "The geometry must match (image size, patch size, width, layers). See docs/vlm.md.")
    p.add_argument("aft_folder", help="an AFT export (e.g. out/final) or its Hub id")
    p.add_argument("--into", required=True, help="the VLM: a folder or Hub id (e.g. llava-hf/llava-1.5-7b-hf)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--revision", help="Hub revision of --into")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that aft_hf wrote")
    p.set_defaults(func=_cli_graft)


def _cli_graft(args, extra) -> int:
    report = graft(args.aft_folder, args.into, args.out, overwrite=args.overwrite, revision=args.revision)
    print(f"wrote {report['out']}: {report['grafted']} tensors of the vision tower '{report['tower_root']}' "
          f"replaced in {', '.join(report['shards_patched'])}; everything else copied unchanged")
    if report["left_out"]:
        print(f"left out (the VLM's tower has no place for them): {', '.join(report['left_out'])}")
    return 0
