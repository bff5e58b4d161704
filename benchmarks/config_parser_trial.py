"""Trial: would jsonargparse replace aft_hf's hand-written config parser? (issue "shape for growth", point 9)

Builds a jsonargparse parser straight from the ``TrainConfig`` dataclasses and tries, one by one, each
command-line behaviour the aft_hf CLI tests pin. Prints OK / FAIL per behaviour and the line counts.
Needs ``pip install jsonargparse docstring-parser`` (not dependencies of aft_hf).

    python benchmarks/config_parser_trial.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

import aft_hf.config
import aft_hf.config_help
from aft_hf.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BEHAVIOURS = {
    "dotted override": ["--attack.eps", "2"],
    "YAML value on the command line": ["--optim.betas", "[0.9,0.98]"],
    "YAML config file": ["--config", str(REPO / "configs" / "tiny_offline.yaml")],
    "bare boolean (--cpu)": ["--cpu"],
    "bare nested boolean (--perf.fused_adamw)": ["--perf.fused_adamw"],
    "unique leaf name alone (--lr)": ["--lr", "2e-5"],
    "Hugging Face alias (--learning_rate)": ["--learning_rate", "2e-5"],
    "shipped recipe by name (--config tiny_offline)": ["--config", "tiny_offline"],
    "did-you-mean for a typo (--attack.epss)": ["--attack.epss", "2"],
    "every problem in one message (two bad values)": ["--attack.eps", "abc", "--optim.lr", "xyz"],
}


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="aft-hf train", exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(TrainConfig, fail_untyped=False)
    return parser


def try_behaviour(parser: ArgumentParser, argv: list[str]) -> tuple[bool, str]:
    try:
        parser.parse_args(argv)
    except BaseException as e:  # argparse errors and SystemExit alike
        text = str(e).strip().splitlines()
        if argv[-1] == "xyz" and "optim.lr" in str(e) and "attack.eps" in str(e):
            return True, ""  # both problems named together
        return False, text[0][:120] if text else type(e).__name__
    return argv[-1] != "xyz", "accepted bad values" if argv[-1] == "xyz" else ""


def main() -> None:
    parser = build_parser()
    kept = 0
    for name, argv in BEHAVIOURS.items():
        ok, why = try_behaviour(parser, argv)
        kept += ok
        print(f"{'OK  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + why}")
    ok = "Attack budget in 1/255" in parser.format_help()
    kept += ok
    print(f"{'OK  ' if ok else 'FAIL'} help text from the fields' docstrings")
    print(f"behaviours kept: {kept} of {len(BEHAVIOURS) + 1}")
    for module in (aft_hf.config, aft_hf.config_help):
        print(f"{Path(inspect.getfile(module)).name}: {len(inspect.getsource(module).splitlines())} lines")


if __name__ == "__main__":
    main()
