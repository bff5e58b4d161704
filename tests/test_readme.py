"""The README's Python example and shipped accelerate configs work as documented."""

import re
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(marker, 1)[1]
    return re.search(r"```(?:python|bash)\n(.*?)```", after, re.S).group(1)


def test_python_api_example_runs(tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(_block_after("<!-- api-example -->"), "README.md", "exec"), {})
    assert (tmp_path / "out" / "api_example" / "final" / "config.json").is_file()


def test_quickstart_commands_are_the_documented_ones():
    main, tests = _block_after("<!-- main-command -->"), _block_after("<!-- test-command -->")
    assert "pip install -c constraints-cpu.txt" in main and "aft-hf" in main
    assert "pytest" in tests and ".[test]" in tests
    assert (REPO / "constraints-cpu.txt").read_text().count("torch==") == 1


def test_accelerate_configs_parse():
    for path in (REPO / "configs" / "accelerate").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["num_processes"] >= 1 and "distributed_type" in cfg, path
