"""Evaluation while training (eval.*): held-out zero-shot accuracy and embedding distance."""

import json
import logging

import pytest
from accelerate import Accelerator

from aft_hf.config import ConfigError, load_config
from aft_hf.train import train
from tests.conftest import write_png_folder


def run_cfg(model, data, out, *extra):
    return load_config(None, [
        "--model.name_or_path", str(model), "--data.dataset", str(data), "--output_dir", str(out),
        "--optim.batch_size", "4", "--max_steps", "3", "--warmup_steps", "0", "--lr", "1e-3",
        "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "100", *extra])


@pytest.fixture
def logged(monkeypatch):
    """Everything sent to the trackers (accelerator.log), as (step, metrics)."""
    calls = []
    original = Accelerator.log

    def spy(self, values, step=None, log_kwargs=None):
        calls.append((step, dict(values)))
        return original(self, values, step=step, log_kwargs=log_kwargs)

    monkeypatch.setattr(Accelerator, "log", spy)
    return calls


def test_world_clip_eval_zero_shot_and_distance(tmp_path, logged, single_thread):
    """builtin:world-clip (a full CLIP) on labelled shapes: zero-shot clean + robust, and the distance."""
    from aft_hf.data.synthetic import write_shapes_imagefolder

    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=24, size=40)
    cfg = run_cfg("builtin:world-clip", data, tmp_path / "run", "--eval.every_steps", "2", "--data.split",
                  "train[:16]", "--eval.eval_split", "train[16:]", "--eval.num_samples", "6",
                  "--eval.robust_eps", "[1, 4]", "--eval.attack_steps", "2")
    train(cfg)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    history = summary["eval_history"]
    assert [h["step"] for h in history] == [0, 2, 3] and summary["eval"] == history[-1]
    keys = {"eval/clean_distance", "eval/zeroshot_top1", "eval/robust_top1_eps1", "eval/robust_top1_eps4"}
    assert all(set(h) == keys | {"step"} for h in history)
    assert history[0]["eval/clean_distance"] == pytest.approx(0.0, abs=1e-6)  # step 0: the original itself
    assert history[-1]["eval/clean_distance"] > 1e-6
    for h in history:
        assert 0 <= h["eval/robust_top1_eps4"] <= h["eval/robust_top1_eps1"] <= h["eval/zeroshot_top1"] <= 1
    tracked = [(step, m) for step, m in logged if "eval/clean_distance" in m]
    assert [step for step, _ in tracked] == [0, 2, 3]


def test_vision_only_base_logs_distance_only(tiny_vision_path, tmp_path, caplog):
    data = write_png_folder(tmp_path / "imgs", 8)
    caplog.set_level(logging.INFO)
    cfg = run_cfg(tiny_vision_path, data, tmp_path / "run", "--eval.every_steps", "5", "--eval.num_samples", "4")
    train(cfg)
    history = json.loads((tmp_path / "run" / "train_summary.json").read_text())["eval_history"]
    assert [h["step"] for h in history] == [0, 3]
    assert all(set(h) == {"step", "eval/clean_distance"} for h in history)
    text = caplog.text
    assert "embedding distance only, no zero-shot accuracy because the base has no text tower" in text
    assert "not held out" in text  # same split as training: said so


def test_eval_off_by_default_and_bad_values(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 4)
    train(run_cfg(tiny_clip_path, data, tmp_path / "run", "--max_steps", "1"))
    assert "eval_history" not in json.loads((tmp_path / "run" / "train_summary.json").read_text())
    with pytest.raises(ConfigError, match="eval.robust_eps"):
        load_config(None, ["--eval.robust_eps", "[0]"])
    with pytest.raises(ConfigError, match="eval.num_samples"):
        load_config(None, ["--eval.num_samples", "0"])
