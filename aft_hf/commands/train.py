"""``aft-hf train``: fine-tune with AFT from a config file plus ``--section.field value`` overrides."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..config import AMBIGUOUS, load_config
from ..config_help import format_aliases, format_fields
from ..guards import TrainingStopped
from ..launch import resolved_for_print
from ..recipes import format_recipes
from ..train import train


def add_subcommand(subparsers) -> None:
    """``aft-hf train --config FILE [--section.field value ...]``."""
    p = subparsers.add_parser(
        "train", help="fine-tune a CLIP image encoder with AFT",
        description="Fine-tune with AFT. Any config field can be overridden: --section.field value "
                    "(or a unique field name alone, e.g. --lr 2e-5 or --resume_from_checkpoint latest).")
    p.add_argument("--config", help="YAML file, or a shipped recipe by name (e.g. tiny_offline; "
                                    "see --list-configs); defaults fill missing fields")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (as this launch would run and save it) and exit")
    p.add_argument("--list-configs", action="store_true", help="list the shipped recipes and exit")
    p.set_defaults(func=_cli_train, accepts_overrides=True)
    describe_config_cli(p)


def _cli_train(args, overrides: list[str]) -> int:
    if args.list_configs:
        print(f"shipped recipes (use as --config NAME):\n{format_recipes()}")
        return 0
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(resolved_for_print(cfg))
        return 0
    try:
        final = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # once per launch, not once per process
            print(f"exported: {final}")
    except TrainingStopped as e:  # not an error: the run can continue from the checkpoint
        print(f"aft-hf train: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def describe_config_cli(parser: argparse.ArgumentParser) -> None:
    """Attach the generated field reference, aliases and recipes to the ``train`` parser's help."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    ambiguous = "\n".join(textwrap.fill(msg, 100, initial_indent="  ", subsequent_indent="    ")
                          for msg in AMBIGUOUS.values())
    parser.epilog = (
        "config fields (override as --section.field VALUE or --section.field=VALUE; a field name alone\n"
        "works when it names one field, e.g. --lr; values are YAML: true, null, [0.9,0.98]; a boolean\n"
        "field given without a value means true, e.g. --cpu):\n"
        f"{format_fields()}\n\n"
        "aliases (argument names of the Hugging Face no_trainer examples):\n"
        f"{format_aliases()}\n"
        "  --per_device_train_batch_size is per process and micro-batch: the global batch is\n"
        "  per_device x processes x optim.gradient_accumulation_steps (optim.batch_size is global).\n\n"
        f"refused as ambiguous:\n{ambiguous}\n\n"
        f"shipped recipes (--config NAME):\n{format_recipes()}\n"
    )
