"""The README's Python example and shipped accelerate configs work as documented."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(marker, 1)[1]
    return re.search(r"```(?:python|bash)\n(.*?)```", after, re.S).group(1)


@pytest.mark.slow
def test_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the example must not need its configs/ folder
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


def _commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block: continuation lines joined, comments dropped, split as a shell would."""
    import shlex

    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()
            and not line.lstrip().startswith("#")]


def _readme_blocks_tested_by(name: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    marker = f"<!-- tested-by: tests/test_readme.py::{name} -->"
    return [re.search(r"```bash\n(.*?)```", part, re.S).group(1) for part in text.split(marker)[1:]]


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    """Every command of the README's train, explain/evaluate and publish blocks, in order, in one folder.

    Training commands run 2 steps unless they set ``--max_steps`` (the shipped recipe runs 200): the
    same code path, in seconds."""
    from aft_hf.cli import main

    monkeypatch.chdir(tmp_path)
    blocks = _readme_blocks_tested_by("test_readme_commands_run")
    assert len(blocks) == 3
    for argv in (cmd for block in blocks for cmd in _commands(block)):
        assert argv[0] == "aft-hf", argv
        args = argv[1:]
        if args[0] == "train" and "--config" in args and "--max_steps" not in args:
            args += ["--max_steps", "2", "--warmup_steps", "1"]
        try:
            code = main(args)
        except SystemExit as stop:  # --help exits through argparse
            code = stop.code
        assert code in (0, None), f"{' '.join(argv)} exited {code}"
    assert (tmp_path / "out" / "tiny_offline" / "final" / "config.json").is_file()
    assert (tmp_path / "world_report" / "report.json").is_file()
    assert (tmp_path / "figs" / "explanations.png").is_file()
    assert (tmp_path / "hub_folder" / "README.md").is_file()
    assert (tmp_path / "clip_aft.safetensors").is_file()


@pytest.mark.slow
def test_training_doc_commands_run(tmp_path, monkeypatch, capsys):
    """docs/training.md's command-line block: each command in a fresh folder (2 steps), a resume after its run."""
    from aft_hf.cli import main

    text = (REPO / "docs" / "training.md").read_text()
    block = text.split("<!-- tested-by: tests/test_readme.py::test_training_doc_commands_run -->", 1)[1]
    commands = _commands(re.search(r"```bash\n(.*?)```", block, re.S).group(1))
    assert len(commands) >= 8
    for i, argv in enumerate(commands):
        assert argv[0] == "aft-hf", argv
        folder = tmp_path / f"cmd{i}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        if (REPO / "configs").is_dir():
            shutil.copytree(REPO / "configs", folder / "configs")
        args = argv[1:]
        if "--config" in args and "--print-config" not in args:
            args += ["--max_steps", "2", "--warmup_steps", "1"]
        runs = [args]
        if "--resume_from_checkpoint" in args:  # something to resume: the same run first, without it
            i_flag = args.index("--resume_from_checkpoint")
            first = args[:i_flag] + args[i_flag + 2:]
            runs = [first, args[:-4] + ["--max_steps", "3", "--warmup_steps", "1"]]
        for run in runs:
            try:
                code = main(run)
            except SystemExit as stop:
                code = stop.code
            assert code in (0, None), f"{' '.join(run)} exited {code}"
