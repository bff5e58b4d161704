"""The ``aft-hf`` subcommands, one module each: argument parsing, option checks and printing; the work
is done by calls into the library modules. :mod:`aft_hf.cli` loads every module listed in its
``COMMAND_MODULES``; nothing else imports them.
"""

import argparse
import contextlib
import re
from typing import Iterator, Mapping

EVALUATE_DATA_OPTIONS = {"data.dataset": "--dataset", "data.split": "--split", "data.config_name": "--config-name",
                         "data.data_dir": "--data-dir", "data.image_column": "--image-column",
                         "data.label_column": "--label-column", "data.class_names": "--class-names"}
"""The config fields that the data loaders' messages name, as ``aft-hf evaluate`` spells them."""


@contextlib.contextmanager
def data_messages_as(options: Mapping[str, str]) -> Iterator[None]:
    """Data errors raised inside name the command's options (``--split``), not the training config's fields
    (``data.split``) that the shared loaders name."""
    from ..data.errors import DataError

    try:
        yield
    except DataError as e:
        text = re.sub(r"\bdata\.[a-z_]+", lambda m: options.get(m.group(0), m.group(0)), str(e))
        if text == str(e):
            raise
        raise type(e)(text) from e


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help, as ``ArgumentDefaultsHelpFormatter`` does, but not when the
    default is ``None`` or ``False`` (nothing to show) or the help already says what the default is, so that
    no option reads ``(default: folder names) (default: None)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or "default" in text):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def add_model_arguments(parser) -> None:
    """``--model`` (repeatable), ``--text-model`` and ``--image-size``: the models that ``explain`` and
    ``evaluate`` compare."""
    parser.add_argument("--model", action="append", required=True,
                        help="Hub id or folder (repeat to compare models)")
    parser.add_argument("--text-model", help="full CLIP checkpoint whose text tower every model uses (default: "
                                             "each full CLIP model its own; required for vision-only models)")
    parser.add_argument("--image-size", type=int, help="run every model at this input side in pixels, its position "
                                                       "embeddings interpolated once (default: each model's own)")


def add_data_quality_arguments(parser) -> None:
    """``--data.max_bad_fraction`` (alias ``--max-bad-fraction``): the same limit, under the same name, as
    ``aft-hf train``, so the error that names it can be followed in ``explain`` and ``evaluate`` too."""
    from ..config import DataConfig

    parser.add_argument("--data.max_bad_fraction", "--max-bad-fraction", dest="max_bad_fraction", type=float,
                        default=DataConfig.max_bad_fraction, metavar="F",
                        help="stop when more than this share of the images read were unreadable (in [0, 1]; "
                             "judged once 20 have been read)")


def check_data_quality_arguments(args, problems) -> None:
    """The share must be a fraction (an :class:`aft_hf.explain.options.OptionProblems` collects it)."""
    problems.require(0 <= args.max_bad_fraction <= 1,
                     f"--data.max_bad_fraction must be in [0, 1], got {args.max_bad_fraction:g}")


def refuse_distributed_launch(command: str, error: type) -> None:
    """``command`` runs in one process: under ``accelerate launch``/``torchrun`` with several processes each
    one would do the whole job and write the same files. Raise ``error`` (one line) before any work."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise error(f"aft-hf {command} runs in one process, but it was launched as {world} (WORLD_SIZE={world}): "
                    f"each would repeat the whole job and write the same files; run `aft-hf {command} ...` "
                    "directly, without accelerate launch or torchrun")


def add_device_and_out_arguments(parser) -> None:
    """``--device`` and ``--out``, the last options of ``explain`` and ``evaluate``."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--out", required=True, help="output folder")
