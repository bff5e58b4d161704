"""The trainer end to end on a tiny CLIP: loss falls, the frozen copy stays, export, exact resume, DDP."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from aft_hf.config import load_config
from aft_hf.model import ImageEncoder
from aft_hf.train import list_checkpoints, train
from tests.image_helpers import write_mixed_folder, write_png_folder
from tests.train_helpers import Interrupt, crash_after_checkpoint

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(model, data, out, *extra):
    return load_config(None, [
        "--model.name_or_path", str(model), "--data.dataset", str(data), "--output_dir", str(out),
        "--optim.batch_size", "8", "--max_steps", "12", "--warmup_steps", "2", "--lr", "1e-3",
        "--attack.steps", "3", "--logging.report_to", "none", "--log_every", "1",
        "--checkpointing_steps", "6", *extra])


def vision_weights(folder):
    return CLIPVisionModelWithProjection.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_fixed_batch_loss_falls_and_export_differs(tiny_clip_path, tmp_path, monkeypatch):
    data = write_png_folder(tmp_path / "imgs", 8)
    captured = {}
    original = ImageEncoder.frozen_copy

    def spy(self):
        captured["frozen"] = original(self)
        return captured["frozen"]

    monkeypatch.setattr(ImageEncoder, "frozen_copy", spy)
    cfg = tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--max_steps", "30", "--checkpointing_steps", "100")
    final = train(cfg)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    losses = [h["train/loss"] for h in summary["log_history"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    base = vision_weights(tiny_clip_path)
    frozen = captured["frozen"].vision.state_dict()
    assert all(torch.equal(base[k], frozen[k]) for k in base)  # f_theta0 never changed
    tuned = vision_weights(final)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert (final / "aft_config.yaml").is_file() and (final / "model.safetensors").is_file()
    assert load_config(final / "aft_config.yaml") == cfg



@pytest.mark.slow
def test_resume_mid_epoch_matches_uninterrupted_run(tiny_clip_path, tmp_path, monkeypatch):
    """32 images, batch 8: the checkpoint at step 6 falls mid-epoch; 12 steps cross an epoch boundary."""
    data = write_png_folder(tmp_path / "imgs", 32)
    full = train(tiny_cfg(tiny_clip_path, data, tmp_path / "a"))

    crash_after_checkpoint(monkeypatch, 6)
    with pytest.raises(Interrupt):
        train(tiny_cfg(tiny_clip_path, data, tmp_path / "b"))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000006"]
    resumed = train(tiny_cfg(tiny_clip_path, data, tmp_path / "b", "--resume_from_checkpoint", "latest"))
    a, b = vision_weights(full), vision_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_checkpoint_retention_and_loadability(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 16)
    train(tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--checkpointing_steps", "2",
                   "--checkpoints_total_limit", "2"))
    ckpts = list_checkpoints(tmp_path / "out")
    assert [p.name for p in ckpts] == ["step_00000010", "step_00000012"]
    assert not list((tmp_path / "out" / "checkpoints").glob(".tmp*"))
    state = load_file(ckpts[-1] / "model.safetensors")
    assert any(k.startswith("vision.") for k in state)
    assert json.loads((ckpts[-1] / "progress.json").read_text())["step"] == 12


def test_bad_resume_path_is_a_clear_error(tiny_clip_path, tmp_path):
    from aft_hf.config import ConfigError

    data = write_png_folder(tmp_path / "imgs", 8)
    with pytest.raises(ConfigError, match="not a complete aft_hf checkpoint"):
        train(tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path)))
    missing = str(tmp_path / "out" / "checkpoints" / "step_99")
    with pytest.raises(ConfigError, match=re.escape(f"'{missing}' does not exist; use 'latest'")):
        train(tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--resume_from_checkpoint", missing))


@pytest.mark.slow
def test_corrupt_grayscale_rgba_folder_trains_and_logs_skip(tiny_clip_path, tmp_path, caplog):
    folder = write_mixed_folder(tmp_path)
    caplog.set_level("INFO")
    train(tiny_cfg(tiny_clip_path, folder, tmp_path / "out", "--max_steps", "3", "--optim.batch_size", "4"))
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["skipped_images"] == 1
    assert "corrupt.png" in caplog.text
    assert "1 unreadable images skipped so far" in caplog.text


@pytest.mark.slow
def test_noise_control_and_every_norm_train(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 8)
    for norm in ("l2", "huber", "elastic", "group"):
        extra = ["--attack.norm", norm, "--attack.eps2", "1", "--max_steps", "2"]
        if norm == "l2":
            extra += ["--attack.eps", "64"]
        train(tiny_cfg(tiny_clip_path, data, tmp_path / norm, *extra))
    noise = tiny_cfg(tiny_clip_path, data, tmp_path / "noise", "--attack.mode", "noise", "--max_steps", "2")
    assert (train(noise) / "config.json").is_file()


def _cli(args, env_extra=None, launcher=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = (launcher or [sys.executable, "-m", "aft_hf"]) + args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process(tiny_clip_path, tmp_path):
    """DDP over 2 gloo ranks == 1 process accumulating 2 micro-batches: same global batch, same data,
    same attack randomness (keyed by global micro-batch index), so the weights agree to float precision."""
    data = write_png_folder(tmp_path / "imgs", 16)
    common = ["train", "--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(data),
              "--optim.batch_size", "8", "--max_steps", "4", "--warmup_steps", "1", "--lr", "1e-3",
              "--attack.steps", "3", "--logging.report_to", "none", "--cpu", "true"]
    one = _cli(common + ["--output_dir", str(tmp_path / "one"), "--gradient_accumulation_steps", "2"])
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), "-m", "aft_hf"]
    two = _cli(common + ["--output_dir", str(tmp_path / "two")], launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    assert summary["images_seen_per_process"] == [16, 16]  # both ranks did work: 4 steps x 4 images each
    base = vision_weights(tiny_clip_path)
    a, b = vision_weights(tmp_path / "one" / "final"), vision_weights(tmp_path / "two" / "final")
    change = sum((a[k] - base[k]).norm() ** 2 for k in a) ** 0.5
    diff = sum((a[k] - b[k]).norm() ** 2 for k in a) ** 0.5
    assert change > 1e-3 and diff < 1e-3 * change, (change, diff)  # float-reduction noise only; no sync: ~50%


@pytest.mark.slow
def test_tensorboard_tracker_logs_metrics(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 8)
    train(tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--max_steps", "2", "--logging.report_to", "tensorboard"))
    events = list((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))
    blob = b"".join(p.read_bytes() for p in events)
    for tag in (b"train/loss", b"train/clean_distance", b"train/lr", b"train/images_per_s", b"data/skipped_images"):
        assert tag in blob, tag


def test_model_released_before_the_process_group_is_destroyed(tiny_clip_path, tmp_path, monkeypatch):
    """accelerate's end_training destroys the process group; a DDP wrapper alive then holds the group's last
    reference and joins gloo's threads with the GIL held (a deadlock seen at the end of 2-process CPU runs).
    So nothing the trainer prepared may outlive the loop: every prepared module is gone by end_training."""
    import weakref

    from accelerate import Accelerator

    prepared, alive_at_end = [], []
    original_prepare, original_end = Accelerator.prepare, Accelerator.end_training

    def prepare(self, *objects, **kwargs):
        out = original_prepare(self, *objects, **kwargs)
        prepared.extend(weakref.ref(o) for o in (out if isinstance(out, tuple) else (out,))
                        if isinstance(o, torch.nn.Module))
        return out

    def end_training(self):
        alive_at_end.extend(r() for r in prepared if r() is not None)
        return original_end(self)

    monkeypatch.setattr(Accelerator, "prepare", prepare)
    monkeypatch.setattr(Accelerator, "end_training", end_training)
    data = write_png_folder(tmp_path / "imgs", 8)
    train(tiny_cfg(tiny_clip_path, data, tmp_path / "out", "--max_steps", "2", "--checkpointing_steps", "2"))
    assert prepared, "the trainer prepared no module: the spy is not on the trainer's path"
    assert not alive_at_end, [type(m).__name__ for m in alive_at_end]


def test_missing_data_folder_is_refused_before_the_model_loads(tiny_clip_path, tmp_path, monkeypatch):
    """A ViT-L takes a minute to load: a mistyped local data folder is refused before that, and before
    --overwrite_output_dir clears anything."""
    import aft_hf.train as trainer
    from aft_hf.data import DataError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data folder was checked")

    monkeypatch.setattr(trainer, "load_model_config", no_model)
    monkeypatch.setattr(trainer, "load_image_encoder", no_model)
    kept = tmp_path / "out" / "checkpoints" / "step_00000006"
    kept.mkdir(parents=True)
    for missing in (tmp_path / "no-such-images", tmp_path / "a-file.png"):
        if missing.suffix:
            missing.write_bytes(b"not a folder")
        with pytest.raises(DataError, match="there is no folder|is a file"):
            train(tiny_cfg(tiny_clip_path, missing, tmp_path / "out", "--overwrite_output_dir", "true"))
    assert kept.is_dir()
