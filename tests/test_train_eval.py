"""Evaluation while training (eval.*): held-out zero-shot accuracy and embedding distance."""

import json
import logging

import pytest
from accelerate import Accelerator

from aft_hf.config import ConfigError, load_config
from aft_hf.evaluate import EvaluationError
from aft_hf.train import train
from tests.image_helpers import write_png_folder


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_off_by_default_and_bad_values(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 4)
    train(run_cfg(tiny_clip_path, data, tmp_path / "run", "--max_steps", "1"))
    assert "eval_history" not in json.loads((tmp_path / "run" / "train_summary.json").read_text())
    with pytest.raises(ConfigError, match="eval.robust_eps"):
        load_config(None, ["--eval.robust_eps", "[0]"])
    with pytest.raises(ConfigError) as e:  # a budget already divided by 255, one past the pixel range: at start-up
        load_config(None, ["--eval.robust_eps", "[0.0157, 300]"])
    assert "eval.robust_eps: eps is in 1/255 units: 0.0157 means" in str(e.value) and "at most 255, got 300" in str(e.value)
    with pytest.raises(ConfigError, match="eval.num_samples"):
        load_config(None, ["--eval.num_samples", "0"])


def _string_label_folder(root, n=8):
    """An imagefolder whose metadata.jsonl labels the images by class name ("label": "red circle")."""
    from PIL import Image

    root.mkdir(parents=True)
    names = ["red circle", "blue square"]
    rows = []
    for i in range(n):
        Image.new("RGB", (40, 40), (200, 20, 20) if i % 2 == 0 else (20, 20, 200)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "label": names[i % 2]})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.mark.slow
def test_string_labels_are_mapped_through_the_class_names(tmp_path, single_thread):
    """metadata.jsonl with "label": "red circle": indices through eval.class_names (or the names found)."""
    data = _string_label_folder(tmp_path / "named")
    names = tmp_path / "names.txt"
    names.write_text("blue square\nred circle\ngreen star\n")
    for extra in (["--eval.class_names", str(names)], []):
        out = tmp_path / f"run{len(extra)}"
        train(run_cfg("builtin:world-clip", data, out, "--max_steps", "1", "--eval.every_steps", "1",
                      "--eval.robust_eps", "[]", *extra))
        history = json.loads((out / "train_summary.json").read_text())["eval_history"]
        assert all(0 <= h["eval/zeroshot_top1"] <= 1 for h in history)
    bad = tmp_path / "bad.txt"
    bad.write_text("blue square\ngreen star\n")
    with pytest.raises(EvaluationError, match="eval: label 'red circle' is not one of the 2 class names"):
        train(run_cfg("builtin:world-clip", data, tmp_path / "bad", "--max_steps", "1", "--eval.every_steps", "1",
                      "--eval.class_names", str(bad)))


@pytest.mark.slow
def test_class_names_file_shorter_than_the_labels_is_refused_as_evaluate_does(tmp_path, single_thread):
    from aft_hf.data.synthetic import write_shapes_imagefolder

    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=24, size=40)
    short = tmp_path / "names.txt"
    short.write_text("red circle\nblue square\n")
    with pytest.raises(EvaluationError, match=r"eval: eval.class_names gives 2 names but the label column has \d+ classes"):
        train(run_cfg("builtin:world-clip", data, tmp_path / "run", "--eval.every_steps", "2",
                      "--eval.num_samples", "24", "--eval.class_names", str(short)))
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.slow
def test_robust_accuracy_while_training_is_the_documented_pgd(tmp_path, monkeypatch, single_thread):
    """eval.attack_steps steps of the package's L-inf PGD (the fast estimate the help and docs name), not APGD."""
    import aft_hf.evaluate.zeroshot as zs
    from aft_hf.config_help import field_help
    from aft_hf.data.synthetic import write_shapes_imagefolder
    from aft_hf.train_eval import EVAL_ATTACK

    calls = []
    monkeypatch.setattr(zs, "apgd_robust", lambda *a, **k: pytest.fail("APGD ran during training"))
    original = zs._pgd_robust
    monkeypatch.setattr(zs, "_pgd_robust", lambda clf, x, y, eps, steps, *a: calls.append(steps) or
                        original(clf, x, y, eps, steps, *a))
    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=12, size=40)
    train(run_cfg("builtin:world-clip", data, tmp_path / "run", "--max_steps", "1", "--eval.every_steps", "1",
                  "--eval.num_samples", "4", "--eval.robust_eps", "[4]", "--eval.attack_steps", "3"))
    assert EVAL_ATTACK == "pgd" and calls and set(calls) == {3}
    doc = {name: text for name, _, text in field_help()}["eval.attack_steps"]
    assert "L-inf PGD" in doc and "APGD" in doc  # the help says what runs here and what evaluate runs


@pytest.mark.slow
def test_a_world_sample_folder_names_its_classes_for_the_eval_too(tmp_path, single_thread):
    """``aft-hf world sample`` writes plain integer labels and a ``classnames.txt``: the eval while training reads
    the names from there (as ``aft-hf evaluate`` does), so the zero-shot accuracy is logged, not skipped."""
    from aft_hf.world.dataset import write_imagefolder

    samples = write_imagefolder(tmp_path / "ws", 12, seed=3)
    cfg = run_cfg("builtin:world-clip", samples, tmp_path / "run", "--max_steps", "1", "--eval.every_steps", "1",
                  "--eval.num_samples", "6", "--eval.robust_eps", "[]")
    train(cfg)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert "eval/zeroshot_top1" in summary["eval"] and 0 <= summary["eval"]["eval/zeroshot_top1"] <= 1
