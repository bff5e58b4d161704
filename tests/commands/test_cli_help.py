"""Subcommands answer --help (parsing only: nothing is loaded)."""

import pytest

from aft_hf.cli import main


def test_benchmark_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["benchmark", "--help"])
    assert stop.value.code == 0 and "--suite" in capsys.readouterr().out


def test_graft_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["graft", "--help"])
    assert stop.value.code == 0 and "--into" in capsys.readouterr().out
