"""``aft-hf export``: a training checkpoint -> a model folder, as ``final/`` is at the end of a run."""

from __future__ import annotations

from ..checkpoint_export import export_checkpoint


def add_subcommand(subparsers) -> None:
    """``aft-hf export CHECKPOINT --out DIR [--overwrite]``."""
    p = subparsers.add_parser(
        "export", help="write a training checkpoint as a model folder (from_pretrained, evaluate, explain, push)",
        description="Write the model of a training checkpoint as final/ is written at the end of a run: a "
                    "save_pretrained folder with the run's aft_config.yaml, which `aft-hf evaluate`, `explain`, "
                    "`push` and `graft` read. The folder records the step (aft_checkpoint.json); its card says so.")
    p.add_argument("checkpoint", help="a checkpoint folder (<output_dir>/checkpoints/step_00000500), or a run's "
                                      "output_dir for its newest checkpoint")
    p.add_argument("--out", required=True, help="the model folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a folder that aft_hf wrote")
    p.set_defaults(func=_cli_export)


def _cli_export(args, extra) -> int:
    out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported: {out} (evaluate it with `aft-hf evaluate --model {out} ...`)")
    return 0
