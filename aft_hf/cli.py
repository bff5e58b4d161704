"""The ``aft-hf`` command line. Each subcommand is one module of :mod:`aft_hf.commands`, listed in
``COMMAND_MODULES``; it exposes ``add_subcommand(subparsers)``, which registers a parser whose
``func(args, extra_args) -> int`` does the work through the library modules.

    aft-hf train --config configs/tiny_offline.yaml [--section.field value ...]
    aft-hf push out/final --repo-id me/clip-aft [--private]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Optional

from .constants import VERSION as __version__
from .errors import AftError

COMMAND_MODULES = [f"aft_hf.commands.{name}" for name in ("train", "export", "push", "world", "import_checkpoint",
                                                            "explain", "evaluate", "demo", "export_openclip", "benchmark",
                                                            "graft")]
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "fsspec", "accelerate.checkpointing",
                 "accelerate.accelerator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aft-hf", description="Adversarial fine-tuning (AFT) of CLIP image encoders.")
    parser.add_argument("--version", action="version", version=f"aft_hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subcommand(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one ``aft-hf`` command; returns its exit status. Ctrl-C while the libraries load (or in a command that
    does not catch it itself) ends in one line, exit 130, not a traceback from deep inside an import."""
    try:
        code = _run(argv)
    except KeyboardInterrupt:
        print("aft-hf: interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    release_process_group()
    return code


def release_process_group() -> None:
    """Destroy the default process group of a launched run while the interpreter is whole, once the command's
    frames (and any DDP wrapper in them) are gone. Left to interpreter exit, gloo's worker threads may still hold
    the last collective's tensors and the rank aborts ("terminate called without an active exception", seen at
    the end of a 2-process CPU benchmark). Nothing to do without torch or a process group."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _run(argv: Optional[list[str]]) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = args.func(args, extra)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except AftError as e:  # bad input: one line, no traceback
        print(f"aft-hf {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `aft-hf ... | head` closed the pipe: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 141
