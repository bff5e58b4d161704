"""The ``aft-hf`` subcommands, one module each: argument parsing, option checks and printing; the work
is done by calls into the library modules. :mod:`aft_hf.cli` loads every module listed in its
``COMMAND_MODULES``; nothing else imports them.
"""


def add_model_arguments(parser) -> None:
    """``--model`` (repeatable) and ``--text-model``: the models that ``explain`` and ``evaluate`` compare."""
    parser.add_argument("--model", action="append", required=True,
                        help="Hub id or folder (repeat to compare models)")
    parser.add_argument("--text-model", help="full CLIP checkpoint whose text tower every model uses (default: "
                                             "each full CLIP model its own; required for vision-only models)")


def add_device_and_out_arguments(parser) -> None:
    """``--device`` and ``--out``, the last options of ``explain`` and ``evaluate``."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--out", required=True, help="output folder")
