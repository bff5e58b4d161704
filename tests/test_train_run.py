"""Run discipline: config validation of training fields, output folders, resume with a changed config, fail fast."""

import json
import os
import shutil

import pytest
import yaml

import aft_hf.train as train_mod
from aft_hf.checkpointing import CheckpointError, list_checkpoints
from aft_hf.cli import main as cli_main
from aft_hf.config import ConfigError, load_config
from aft_hf.hub import HubError
from aft_hf.train import train
from tests.image_helpers import write_png_folder
from tests.train_helpers import small_cfg, strict_json


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_png_folder(tmp_path_factory.mktemp("discipline") / "imgs", 16)


@pytest.mark.parametrize("override, message", [
    (["--attack.eps", "nan"], "attack.eps: must be a finite number"),
    (["--lr", "inf"], "optim.lr: must be a finite number"),
    (["--optim.betas", "[0.9,.nan]"], "optim.betas[1]: must be a finite number"),
    (["--max_grad_norm", "-.inf"], "optim.max_grad_norm: must be a finite number"),
    (["--seed", "-1"], "seed: must be in [0, 2**32 - 1]"),
    (["--seed", "4294967296"], "seed: must be in [0, 2**32 - 1]"),
    (["--attack.random_start", "false", "--attack.noise_std", "0"], "training is a no-op"),
    (["--optim.max_nonfinite_steps", "0"], "optim.max_nonfinite_steps: must be >= 1"),
])
def test_validation_refuses(override, message, capsys):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert message in str(e.value)
    assert cli_main(["train", *override]) == 2
    assert message in capsys.readouterr().err


def test_validation_accepts_edges():
    assert load_config(None, ["--seed", str(2**32 - 1)]).seed == 2**32 - 1
    cfg = load_config(None, ["--attack.random_start", "false", "--attack.noise_std", "0", "--attack.mode", "noise"])
    assert cfg.attack.mode == "noise"
    assert load_config(None, ["--attack.random_start", "false"]).attack.noise_std == 1.0


@pytest.mark.slow
def test_checkpoint_contents_and_fresh_run_refused(tiny_clip_path, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cfg = small_cfg(tiny_clip_path, data, out, "--max_steps", "2")
    fsync, synced = os.fsync, []

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    train(cfg)
    monkeypatch.setattr(os, "fsync", fsync)
    ckpt = list_checkpoints(out)[-1]
    tmp = str(ckpt.parent / ".tmp_step_00000002")
    written = {str(p).replace(str(ckpt), tmp) for p in ckpt.rglob("*")} | {tmp}
    assert written <= set(synced), written - set(synced)  # every file and the folder before the rename
    assert str(ckpt.parent) in synced  # and the parent after it
    assert load_config(ckpt / "aft_config.yaml") == cfg
    assert set(json.loads((ckpt / "versions.json").read_text())) == {"aft_hf", "torch", "transformers",
                                                                       "accelerate", "datasets"}
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--overwrite_output_dir"):
        train(cfg)
    args = ["train", "--config", str(ckpt / "aft_config.yaml")]
    assert cli_main(args) == 2 and "already holds checkpoints" in capsys.readouterr().err
    shutil.copytree(out, tmp_path / "lw")  # the same finished run with its checkpoints deleted
    shutil.rmtree(tmp_path / "lw" / "checkpoints")
    weights = (tmp_path / "lw" / "final" / "model.safetensors").read_bytes()
    for resume in ([], ["--resume_from_checkpoint", "latest"]):
        with pytest.raises(CheckpointError, match="already holds the finished model of another run"):
            train(small_cfg(tiny_clip_path, data, tmp_path / "lw", "--max_steps", "1", *resume))
    assert (tmp_path / "lw" / "final" / "model.safetensors").read_bytes() == weights
    stale = out / "checkpoints" / ".tmp_step_00000099"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    train(small_cfg(tiny_clip_path, data, out, "--max_steps", "1", "--overwrite_output_dir"))
    assert [p.name for p in list_checkpoints(out)] == ["step_00000001"]  # the other run's are gone
    assert not stale.exists()


@pytest.mark.slow
def test_resume_with_changed_optimisation(tiny_clip_path, data, tmp_path):
    """The issue: resuming with --lr 0.01 --scheduler constant used the checkpoint's lr while the
    exported config said 0.01. Now refused, or (with --allow_config_change) applied and recorded."""
    out = tmp_path / "out"
    train(small_cfg(tiny_clip_path, data, out, "--max_steps", "4"))
    change = ["--max_steps", "8", "--lr", "0.01", "--scheduler", "constant", "--resume_from_checkpoint", "latest"]
    with pytest.raises(ConfigError) as e:
        train(small_cfg(tiny_clip_path, data, out, *change))
    assert "optim.lr: 0.001 -> 0.01" in str(e.value) and "optim.scheduler: 'cosine' -> 'constant'" in str(e.value)
    assert "optim.max_steps" not in str(e.value)  # training longer is allowed
    final = train(small_cfg(tiny_clip_path, data, out, *change, "--allow_config_change", "--log_every", "2"))
    summary = strict_json(out / "train_summary.json")
    lrs = {h["step"]: h["train/lr"] for h in summary["log_history"]}
    assert sorted(lrs) == [1, 2, 3, 4, 6, 8]  # history of the whole run, carried through the checkpoint
    assert lrs[6] == lrs[8] == 0.01 and lrs[4] < 1e-3
    assert summary["images_seen"] == 8 * 4 and summary["steps"] == 8
    assert summary["config_changes"][0]["step"] == 4
    assert yaml.safe_load((final / "aft_config.yaml").read_text())["optim"]["lr"] == 0.01


def test_unusable_output_or_offline_push_fail_before_loading(tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded: the check comes first")

    monkeypatch.setattr(train_mod, "load_image_encoder", no_model)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="is not writable"):
        train(load_config(None, ["--output_dir", str(blocker / "out"), "--report_to", "none"]))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, ["--output_dir", str(tmp_path / "o"), "--report_to", "none", "--hub.push_to_hub",
                             "--hub.hub_model_id", "me/m"])
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        train(cfg)


def test_foreign_final_folder_is_refused_before_loading(tmp_path, monkeypatch):
    """An `<output_dir>/final` that aft_hf did not write would be refused at export: refuse it at start."""
    from aft_hf.outputs import OutputError

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded: the check comes first")

    monkeypatch.setattr(train_mod, "load_image_encoder", no_model)
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not written by aft_hf"):
        train(load_config(None, ["--output_dir", str(tmp_path / "run"), "--report_to", "none"]))
    assert (final / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("held", [("final",), ("summary",), ("final", "summary")])
def test_finished_model_without_checkpoints_is_refused(tmp_path, monkeypatch, capsys, held):
    """The issue: with `checkpoints/` gone, a new run (or `--resume_from_checkpoint latest`, which then starts
    from scratch) silently replaced the earlier run's `final/` and `train_summary.json`. Refused now, in one
    line, before the model is loaded, unless --overwrite_output_dir."""
    from aft_hf.guards import refuse_other_runs
    from aft_hf.outputs import write_marker

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded: the check comes first")

    monkeypatch.setattr(train_mod, "load_image_encoder", no_model)
    monkeypatch.setattr(train_mod, "load_model_config", no_model)
    out = tmp_path / "run"
    out.mkdir()
    if "final" in held:
        (out / "final").mkdir()
        (out / "final" / "model.safetensors").write_bytes(b"the earlier run's weights")
        write_marker(out / "final", "aft_hf export_pretrained")
    if "summary" in held:
        (out / "train_summary.json").write_text('{"steps": 4}')
    base = ["train", "--output_dir", str(out), "--report_to", "none", "--cpu", "true"]
    for resume in ([], ["--resume_from_checkpoint", "latest"]):
        with pytest.raises(CheckpointError, match="already holds the finished model of another run"):
            train(load_config(None, base[1:] + resume))
        assert cli_main(base + resume) == 2
        err = capsys.readouterr().err.strip()
        assert "already holds the finished model of another run" in err and "--overwrite_output_dir" in err
        assert len(err.splitlines()) == 1
    assert "final" not in held or (out / "final" / "model.safetensors").read_bytes() == b"the earlier run's weights"
    assert "summary" not in held or (out / "train_summary.json").read_text() == '{"steps": 4}'
    refuse_other_runs(out, None, overwrite=True)  # the way to start afresh there
    refuse_other_runs(out, str(tmp_path / "elsewhere" / "step_00000004"), overwrite=False)  # an explicit resume
