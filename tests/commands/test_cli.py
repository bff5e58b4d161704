"""The training CLI as a user meets it: --help, aliases, bare booleans, recipes by name, and the
start-up refusals (tracker not installed, fp16 on CPU, flash-attention, FSDP/DeepSpeed, --device)."""

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType

from aft_hf import launch
from aft_hf.cli import main
from aft_hf.config import ConfigError, leaf_paths, load_config
from aft_hf.config_help import field_help
from aft_hf.launch import LaunchError, apply_launch, resolve_device
from aft_hf.recipes import RECIPES_DIR, list_recipes
from tests.image_helpers import write_png_folder

REPO = Path(__file__).resolve().parents[2]


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse (--help) exits
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- help and names


def test_help_lists_every_field_with_default_and_meaning(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    rows = field_help()
    assert [r[0] for r in rows] == leaf_paths()
    for path, default, meaning in rows:
        assert meaning, f"{path} has no documentation (add a string literal under the field)"
        assert f"--{path} (default: " in out, path
    assert "--optim.mixed_precision (default: null)" in out and "--attack.steps (default: 10)" in out
    assert "Attack iterations K per image" in out and "Optimiser steps: the length of training" in out
    assert "--per_device_train_batch_size" in out and "tiny_offline" in out and "'--steps' is ambiguous" in out


def _subcommand_parsers(parser):
    """(name, parser) of every subcommand, nested ones (``world sample``) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommand_parsers(sub))


def test_every_option_of_every_subcommand_says_what_it_does(capsys):
    from aft_hf.cli import build_parser

    parsers = dict(_subcommand_parsers(build_parser()))
    assert {"train", "demo", "evaluate", "explain", "push", "world sample", "world eval"} <= set(parsers)
    missing = [f"aft-hf {name} {action.option_strings[-1]}" for name, sub in parsers.items()
               for action in sub._actions if action.option_strings and not action.help]
    assert not missing, f"options without help text: {missing}"
    for command in ("explain", "evaluate"):  # a default is shown once, and never as None
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and "(default: None)" not in out and "(default: False)" not in out, command
        assert "(default: saliency gradcam" in out, command  # lists shown as typed on the command line


@pytest.mark.slow
def test_output_piped_into_a_closed_pipe_is_not_a_traceback():
    """`aft-hf train --print-config | head` must end quietly: a reader that stops early is not an error."""
    proc = subprocess.run(f"{sys.executable} -m aft_hf train --print-config | true", shell=True,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("alias,value,path,expected", [
    ("model_name_or_path", "some/model", "model.name_or_path", "some/model"),
    ("dataset_name", "some/data", "data.dataset", "some/data"),
    ("learning_rate", "3e-4", "optim.lr", 3e-4),
    ("lr_scheduler_type", "linear", "optim.scheduler", "linear"),
    ("num_warmup_steps", "5", "optim.warmup_steps", 5),
    ("max_train_steps", "5000", "optim.max_steps", 5000),
    ("per_device_train_batch_size", "4", "optim.per_device_batch_size", 4),
    ("output_dir", "o", "checkpoint.output_dir", "o"),
    ("seed", "3", "seed", 3),
    ("report_to", "none", "logging.report_to", "none"),
    ("checkpointing_steps", "7", "checkpoint.checkpointing_steps", 7),
    ("resume_from_checkpoint", "latest", "checkpoint.resume_from_checkpoint", "latest"),
    ("push_to_hub", "true", "hub.push_to_hub", True),
    ("hub_model_id", "me/m", "hub.hub_model_id", "me/m")])
def test_hf_example_names_are_aliases(alias, value, path, expected):
    cfg = load_config(None, ["--hub_model_id", "me/m", f"--{alias}", value])
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    assert node == expected


def test_bare_steps_is_refused_naming_both_meanings():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--steps", "3"])
    assert "--attack.steps" in str(err.value) and "--optim.max_steps" in str(err.value)


def test_unknown_name_gets_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean --learning_rate"):
        load_config(None, ["--lerning_rate", "1e-4"])
    with pytest.raises(ConfigError, match="did you mean --attack.eps"):
        load_config(None, ["--attack.epz", "2"])
    with pytest.raises(ConfigError, match="did you mean --print-config"):
        load_config(None, ["--print_confg"])


@pytest.mark.parametrize("flag,get", [
    ("--cpu", lambda c: c.cpu), ("--perf.fused_adamw", lambda c: c.perf.fused_adamw),
    ("--data.streaming", lambda c: c.data.streaming), ("--hub.private", lambda c: c.hub.private)])
def test_bare_boolean_means_true(flag, get):
    assert get(load_config(None, [flag])) is True  # last argument
    assert get(load_config(None, [flag, "--lr", "1e-4"])) is True  # followed by another flag
    assert get(load_config(None, [flag, "false"])) is False


def test_per_device_batch_becomes_the_global_batch():
    cfg = load_config(None, ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"])
    fake = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, mixed_precision="no",
                           device=torch.device("cpu"), num_processes=3, is_main_process=True)
    apply_launch(cfg, fake)
    assert cfg.optim.batch_size == 4 * 3 * 2 and cfg.optim.per_device_batch_size == 4
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ["--per_device_train_batch_size", "4", "--optim.batch_size", "8"])


@pytest.mark.slow
def test_print_config_is_the_config_the_run_saves(tmp_path, capsys, monkeypatch, single_thread):
    """The issue: `--per_device_train_batch_size 4 --print-config` printed `batch_size: 32` (the recipe's) while the
    run trained with a global batch of 4 and saved `batch_size: 4` in aft_config.yaml."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    args = _train_args(tmp_path, "--per_device_train_batch_size", "4", "--max_steps", "1", "--warmup_steps", "0",
                       "--logging.report_to", "none", "--data.max_samples", "8")
    code, printed, _ = run_cli([*args, "--print-config"], capsys)
    assert code == 0 and "# optim.batch_size resolved for this launch: per_device_batch_size 4 x 1 process" in printed
    assert run_cli(args, capsys)[0] == 0
    saved = (tmp_path / "out" / "final" / "aft_config.yaml").read_text()
    assert yaml.safe_load(printed) == yaml.safe_load(saved)
    assert yaml.safe_load(printed)["optim"]["batch_size"] == 4
    monkeypatch.setenv("WORLD_SIZE", "3")  # what `accelerate launch` sets: the global batch of that launch
    code, printed, _ = run_cli([*args, "--print-config"], capsys)
    assert "4 x 3 process(es)" in printed and yaml.safe_load(printed)["optim"]["batch_size"] == 12


# --------------------------------------------------------------------------- recipes


def test_recipes_have_one_source_and_work_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    shipped = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))
    top = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert shipped == top and len(shipped) >= 4
    for name in shipped:  # configs/ of a clone are links to (or copies identical to) the packaged files
        assert filecmp.cmp(REPO / "configs" / name, RECIPES_DIR / name, shallow=False), name
    assert "recipes/*.yaml" in (REPO / "setup.cfg").read_text()
    monkeypatch.chdir(tmp_path)
    assert load_config("aft_vit_b16_huber").attack.norm == "huber"
    assert load_config("tiny_offline.yaml").model.name_or_path == "builtin:tiny-clip"
    code, out, _ = run_cli(["train", "--list-configs"], capsys)
    assert code == 0 and all(name in out for name in list_recipes())
    code, _, err = run_cli(["train", "--config", "no_such_recipe", "--print-config"], capsys)
    assert code == 2 and "tiny_offline" in err


def test_gpu_recipes_leave_precision_to_the_launcher():
    for name in ("aft_vit_b16_huber", "fare4_vit_l14", "short_repro_vit_b16", "tiny_offline"):
        assert load_config(name).optim.mixed_precision is None, name


# --------------------------------------------------------------------------- start-up refusals


def _train_args(tmp_path, *extra):
    return ["train", "--config", "tiny_offline", "--output_dir", str(tmp_path / "out"), *extra]


def test_missing_tracker_is_an_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    code, _, err = run_cli(_train_args(tmp_path, "--logging.report_to", "wandb"), capsys)
    assert code == 2 and "pip install aft_hf[wandb]" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fp16_on_cpu_is_refused(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(_train_args(tmp_path, "--optim.mixed_precision", "fp16", "--cpu"), capsys)
    assert code == 2 and "fp16 is not supported on CPU" in err
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # the same, chosen by the launcher
    code, _, err = run_cli(_train_args(tmp_path, "--cpu"), capsys)
    assert code == 2 and "fp16 is not supported on CPU" in err
    fake = SimpleNamespace(distributed_type=DistributedType.NO, mixed_precision="fp16", device=torch.device("cpu"),
                           num_processes=1)
    with pytest.raises(LaunchError, match="fp16"):
        apply_launch(load_config(None), fake)



@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_evaluate_refuses_fp16_on_cpu_before_loading_anything(tmp_path, capsys, monkeypatch, device):
    """``aft-hf evaluate --mixed-precision fp16`` on CPU (asked for, or ``auto`` on a machine made to look GPU-less)
    stops with the other option problems, before a model loads (the model named here does not exist: a late check
    would fail on loading it instead)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["evaluate", "--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path),
                            "--metrics", "robust", "--mixed-precision", "fp16", "--device", device,
                            "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "--mixed-precision fp16 is not supported on CPU" in err and "no-model" not in err


def test_flash_attention_checked_up_front(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(_train_args(tmp_path, "--model.attn_implementation", "flash_attention_2", "--cpu"), capsys)
    assert code == 2 and "flash_attention_2 needs a CUDA GPU" in err
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None)
    assert "pip install flash-attn" in launch.attention_problems("flash_attention_2", cpu=False)[0]
    assert launch.attention_problems("sdpa", cpu=True) == launch.attention_problems("eager", cpu=True) == []


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_and_deepspeed_launches_are_refused(var, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(var, "true")
    code, _, err = run_cli(_train_args(tmp_path), capsys)
    assert code == 2 and "unwrapped module's own parameters" in err


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_sharded_accelerator_is_refused(kind):
    fake = SimpleNamespace(distributed_type=kind, mixed_precision="no", device=torch.device("cpu"), num_processes=2)
    with pytest.raises(LaunchError, match="does not support"):
        apply_launch(load_config(None), fake)


def test_device_is_validated(monkeypatch, capsys, tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(LaunchError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LaunchError, match="no CUDA device"):
        resolve_device("cuda")
    code, _, err = run_cli(["evaluate", "--model", "builtin:tiny-clip", "--dataset", "x", "--out", str(tmp_path),
                            "--device", "cuda:0"], capsys)
    assert code == 2 and "no CUDA device" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the launcher decides precision


@pytest.mark.slow
def test_precision_and_layout_come_from_the_launch(tiny_clip_path, tmp_path):
    """ACCELERATE_MIXED_PRECISION (what `accelerate launch --mixed_precision bf16` sets) reaches the
    run, and the summary and exported config record the effective precision and batch layout."""
    data = write_png_folder(tmp_path / "imgs", 8)
    out = tmp_path / "out"
    args = ["train", "--model_name_or_path", str(tiny_clip_path), "--dataset_name", str(data), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_train_steps", "2",
            "--num_warmup_steps", "0", "--attack.steps", "1", "--report_to", "none", "--cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_MIXED_PRECISION": "bf16"}
    run = subprocess.run([sys.executable, "-m", "aft_hf", *args], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on cpu, precision bf16, attack" in run.stderr  # the start-up line says how the run computes
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and summary["num_processes"] == 1
    assert summary["gradient_accumulation_steps"] == 2 and summary["global_batch_size"] == 4
    assert set(summary["versions"]) >= {"torch", "transformers", "accelerate", "datasets", "aft_hf"}
    recorded = load_config(out / "final" / "aft_config.yaml")
    assert recorded.optim.mixed_precision == "bf16" and recorded.optim.batch_size == 4
    from aft_hf.card import build_model_card

    assert "| `optim.mixed_precision` | bf16 |" in str(build_model_card(out / "final", repo_id="me/x"))


def test_the_launchers_precision_is_read_in_any_case_and_a_bad_one_refused(tmp_path, monkeypatch, capsys):
    """accelerate itself takes ``ACCELERATE_MIXED_PRECISION=BF16`` as fp32 while recording "BF16": the trainer
    normalises the value it hands on, and refuses one that is none of no / fp16 / bf16 before any work."""
    from accelerate.state import AcceleratorState

    from aft_hf.train import build_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "BF16")
    cfg = load_config(None, ["--cpu"])
    assert launch.requested_precision(cfg) == "bf16"
    AcceleratorState._reset_state(True)
    try:
        assert build_accelerator(cfg, tmp_path / "acc").mixed_precision == "bf16"
    finally:  # later tests of this process must not inherit a bf16 state
        AcceleratorState._reset_state(True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bogus")
    code, _, err = run_cli(_train_args(tmp_path, "--cpu"), capsys)
    assert code == 2 and "ACCELERATE_MIXED_PRECISION='bogus'" in err and "no, fp16, bf16" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_config_precision_overrides_the_launcher(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert launch.requested_precision(load_config(None)) == "bf16"
    assert launch.requested_precision(load_config(None, ["--optim.mixed_precision", "no"])) == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert launch.requested_precision(load_config(None)) == "no"


@pytest.mark.parametrize("command", [
    ["world", "sample", "-n", "2"],
    ["explain", "--model", "builtin:world-clip", "--images", "IMAGES"],
    ["evaluate", "--model", "builtin:world-clip", "--dataset", "IMAGES", "--metrics", "zeroshot"],
    ["benchmark", "--model", "builtin:world-clip", "--datasets", "cifar10"],
])
@pytest.mark.parametrize("inside", [False, True])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, inside, tmp_path, capsys):
    """``--out`` naming a file (or a folder inside one) stops each command at once in one line, not after its
    work, when the results are written (an evaluation's hours would be lost); the file is left as it was."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    (tmp_path / "imgs").mkdir()
    args = [str(tmp_path / "imgs") if a == "IMAGES" else a for a in command]
    out = blocker / "run" if inside else blocker
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    expected = "is a file, so no folder can be made there" if inside else "is a file, not a folder"
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("command", [
    ["world", "sample", "-n", "2"],
    ["explain", "--model", "builtin:world-clip", "--images", "IMAGES"],
    ["evaluate", "--model", "builtin:world-clip", "--dataset", "IMAGES", "--metrics", "zeroshot"],
    ["benchmark", "--model", "builtin:world-clip", "--datasets", "cifar10"],
])
def test_results_are_never_written_into_a_models_folder(command, tmp_path, capsys):
    """``--out`` naming an exported model's folder is refused: ``aft-hf push`` uploads that folder as it is, so
    reports, benchmark state or images written there would be published with the model."""
    model = tmp_path / "final"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "imgs").mkdir()
    args = [str(tmp_path / "imgs") if a == "IMAGES" else a for a in command]
    code, _, err = run_cli([*args, "--out", str(model)], capsys)
    assert code == 2 and "holds a model (config.json)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    run = tmp_path / "run"  # a training run's folder: `train --overwrite` would delete results written there
    (run / "checkpoints").mkdir(parents=True)
    code, _, err = run_cli([*args, "--out", str(run)], capsys)
    assert code == 2 and "holds a training run (final/ or checkpoints/)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


def test_a_run_refused_for_its_data_leaves_no_empty_output_folder(tmp_path, capsys):
    """A mistyped data set is found after the output folder's write check: the refusal removes the folder it made
    (still empty), so no empty ``out/`` is left to be mistaken for a run."""
    code, _, err = run_cli(_train_args(tmp_path, "--data.dataset", str(tmp_path / "no-such-images")), capsys)
    assert code == 2 and "there is no folder" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()  # a folder that existed before the run is never removed
    code, _, _ = run_cli(["train", "--config", "tiny_offline", "--output_dir", str(tmp_path / "kept"),
                          "--data.dataset", str(tmp_path / "no-such-images")], capsys)
    assert code == 2 and (tmp_path / "kept").is_dir()


def test_ctrl_c_while_the_libraries_load_is_one_line(monkeypatch, capsys):
    """A Ctrl-C during the seconds of imports before a command runs: exit 130 and one line, no import traceback."""
    from aft_hf import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["benchmark", "--help"]) == 130
    assert capsys.readouterr().err.strip() == "aft-hf: interrupted (Ctrl-C)"


def test_evaluate_refuses_a_missing_data_folder_before_loading_models(tmp_path, capsys, monkeypatch):
    import aft_hf.commands.evaluate as evaluate_command

    def no_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the data folder was checked")

    monkeypatch.setattr(evaluate_command, "load_models_and_texts", no_models)
    code, _, err = run_cli(["evaluate", "--model", "openai/clip-vit-base-patch32", "--dataset",
                            str(tmp_path / "no-such-images"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "there is no folder" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_commands_refuse_each_others_results_folders_before_loading(tmp_path, capsys):
    """Cheap, before any model or data set loads: the folder names are all it takes."""
    from aft_hf.outputs import claim_results_folder, results_folder

    with results_folder(tmp_path / "ev", "aft-hf evaluate") as folder:
        (folder / "report.json").write_text("{}")
    claim_results_folder(tmp_path / "bench", "aft-hf benchmark")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    for argv, owner in [
        (["benchmark", "--model", "no/such-model", "--datasets", "no/such-data", "--out", str(tmp_path / "ev")],
         "aft-hf evaluate"),
        (["evaluate", "--model", "no/such-model", "--dataset", str(tmp_path / "imgs"), "--out",
          str(tmp_path / "bench")], "aft-hf benchmark"),
        (["explain", "--model", "no/such-model", "--images", str(tmp_path / "imgs"), "--out",
          str(tmp_path / "ev")], "aft-hf evaluate"),
    ]:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and f"holds the results of `{owner}`" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "ev" / "report.json").read_text() == "{}"


def test_a_launched_command_destroys_its_process_group_before_the_interpreter_exits(tmp_path, capsys):
    """Left to interpreter exit, gloo's threads can abort a rank after its work is done; main() destroys the
    group once the command has returned (here a one-rank gloo group, and a command that fails in one line)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        code, _, err = run_cli(["evaluate", "--model", "m", "--dataset", str(tmp_path / "none"), "--out",
                                str(tmp_path / "r")], capsys)
        assert code == 2 and "there is no folder" in err
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_exported_is_printed_by_the_main_process_only(tmp_path, capsys, monkeypatch):
    """Under `accelerate launch` every rank printed `exported: ...`."""
    import aft_hf.commands.train as train_command

    monkeypatch.setattr(train_command, "train", lambda cfg: tmp_path / "final")
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--config", "tiny_offline", "--output_dir", str(tmp_path)]) == 0
        assert ("exported: " in capsys.readouterr().out) == printed
