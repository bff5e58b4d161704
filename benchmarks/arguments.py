"""Argument types shared by the benchmark scripts: a bad value is refused by argparse in one line
(``error: argument --rows: ...``) instead of failing minutes later with a traceback.

Importing it also makes the script's output line-buffered, so a long run piped to a file or ``tee`` shows each
progress line when it is printed, not when the run ends."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)


def at_least(minimum: int) -> Callable[[str], int]:
    """An ``int`` argument type that refuses values below ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = at_least(1)
"""An integer >= 1 (sizes, rounds, threads, repetitions)."""


def int_list(text: str) -> list[int]:
    """A comma list of integers >= 1, e.g. ``7,20,64``."""
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers >= 1, got {text!r}")
    return [positive_int(item.strip()) for item in items]


def budget_list(text: str) -> list[float]:
    """A comma list of budgets >= 0 (in 1/255), e.g. ``2,4``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers >= 0, got {text!r}")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {item!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"budgets must be >= 0, got {item}")
        values.append(value)
    return values


def output_file(text: str) -> Path:
    """A file to write at the end (``--json``): refused now when its folder is missing or read-only, or it is a
    folder, so a long run does not lose its report at the last moment."""
    path = Path(text).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; give a file name")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"'{text}' cannot be written")
    return path


def name_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """A comma list of names, each one of ``choices``."""
    known = list(choices)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma list of: {', '.join(known)}")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})")
        return names

    parse.__name__ = "comma list"
    return parse


def refuse_fp16_on_cpu(parser: argparse.ArgumentParser, precision: str, on_gpu: bool) -> None:
    """fp16 autocast is a GPU setting: accelerate keeps a CPU run in fp32, so its timings would be fp32's."""
    if precision == "fp16" and not on_gpu:
        parser.error("--precision fp16 needs a GPU (on CPU accelerate runs fp32); use bf16 or fp32")


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append ``(default: ...)`` to the help of every option that has a default (a flag's is off), so ``--help`` says
    what a bare run does; returns the parser."""
    for action in parser._actions:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS)
                and text != argparse.SUPPRESS and "%(default)" not in text and "default:" not in text):
            action.help = f"{text} (default: %(default)s)".strip()
    return parser
