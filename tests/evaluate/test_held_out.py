"""An evaluation of a model on its own training split says so: in the report, report.md and the model card."""

import json
import shutil

import pytest
from PIL import Image

from aft_hf.config import load_config
from aft_hf.evaluate.held_out import OVERLAP_KEY, training_data_of, training_overlap


def test_the_training_split_of_the_same_data_is_flagged(tmp_path, monkeypatch):
    trained = {"dataset": "ILSVRC/imagenet-1k", "split": "train"}
    assert "not held out: split 'train' of 'ILSVRC/imagenet-1k'" in training_overlap(trained, "ILSVRC/imagenet-1k", "train")
    assert training_overlap(trained, "ILSVRC/imagenet-1k", "validation") is None
    assert training_overlap(trained, "other/data", "train") is None
    assert training_overlap(None, "ILSVRC/imagenet-1k", "train") is None  # no training record: nothing to say
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    local = {"dataset": "imagefolder", "data_dir": "imgs/", "split": "train"}  # two spellings of one folder
    assert training_overlap(local, str(tmp_path / "imgs"), "train") is not None
    assert training_overlap({"dataset": "./imgs"}, "imgs", "train") is not None  # split defaults to train
    assert training_overlap(local, "imagefolder", "train", data_dir="./imgs") is not None


def test_a_model_folder_or_hub_id_without_a_record_has_no_training_data(tmp_path):
    (tmp_path / "aft_config.yaml").write_text("data:\n  dataset: x\n  split: test\n")
    assert training_data_of(str(tmp_path)) == {"dataset": "x", "split": "test"}
    assert training_data_of(str(tmp_path / "missing")) is None
    assert training_data_of("someone/not-cached") is None  # offline, not in the cache: None, no error
    assert training_data_of("builtin:world-clip") is None
    (tmp_path / "aft_config.yaml").write_text("data: [unclosed\n")
    assert training_data_of(str(tmp_path)) is None


def _images(folder, n=4):
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for i in range(n):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(folder / "ab"[i % 2] / f"{i}.png")
    return folder


@pytest.mark.slow
def test_evaluate_and_the_card_say_when_the_images_are_the_training_split(tmp_path, tiny_clip_path):
    from aft_hf.cli import main

    train, held_out = _images(tmp_path / "train_imgs"), _images(tmp_path / "test_imgs")
    model = tmp_path / "model"
    shutil.copytree(tiny_clip_path, model)
    (model / "aft_config.yaml").write_text(load_config(None, ["--data.dataset", str(train)]).to_yaml())
    for data, out in ((train, "ev_train"), (held_out, "ev_test")):
        assert main(["evaluate", "--model", str(model), "--dataset", str(data), "--metrics", "zeroshot",
                     "--out", str(tmp_path / out)]) == 0
    flagged = json.loads((tmp_path / "ev_train" / "report.json").read_text())
    assert "split 'train'" in flagged[OVERLAP_KEY] and "not held out" in flagged[OVERLAP_KEY]
    assert "**Warning: not held out" in (tmp_path / "ev_train" / "report.md").read_text()
    assert OVERLAP_KEY not in json.loads((tmp_path / "ev_test" / "report.json").read_text())
    for report, warned in (("ev_train", True), ("ev_test", False)):
        out = tmp_path / f"hub_{report}"
        assert main(["push", str(model), "--repo-id", "me/tiny", "--report", str(tmp_path / report / "report.json"),
                     "--dry-run", "--out", str(out)]) == 0
        card = (out / "README.md").read_text()
        assert ("**Warning: not held out" in card) is warned
        assert str(tmp_path) not in card  # the warning names the data as the card does, not the author's path


@pytest.mark.parametrize("trained, evaluated, overlap", [
    ("train[:80%]", "train", True), ("train[:80%]", "train[80%:]", False), ("train[:80%]", "train[70%:]", True),
    ("train[:100]", "train[100:200]", False), ("train[:100]", "train[50:]", True), ("train[:100]", "train[50%:]", None),
    ("train+validation", "validation", True), ("train", "test", False), ("train[-10%:]", "train[:5%]", None),
])
def test_slices_of_the_training_split_are_compared(trained, evaluated, overlap):
    """The documented recipe trains on train[:80%]; evaluating on `train` then measured 80% training images, unsaid.
    Slices that cannot be compared without the split's size (None here) get a hedged warning, not a false claim."""
    flagged = training_overlap({"dataset": "me/data", "split": trained}, "me/data", evaluated)
    assert (flagged is not None) is (overlap is not False)
    if overlap is None:
        assert flagged.startswith("perhaps not held out:") and "cannot be compared here" in flagged
    elif flagged and trained != evaluated:
        assert flagged.startswith("not held out:") and f"overlaps '{trained}', the split this model was trained on" in flagged


def test_relative_training_paths_are_read_from_the_runs_working_directory(tmp_path, monkeypatch):
    """A run trained with `--data.dataset ws` in A: evaluating `../A/ws` from B was missed, and B's own `ws` flagged."""
    a, b = tmp_path / "A", tmp_path / "B"
    for folder in (a / "ws", b / "ws", a / "run" / "final", a / "run" / "checkpoints" / "step_00000004"):
        folder.mkdir(parents=True)
    (a / "run" / "final" / "aft_config.yaml").write_text("data:\n  dataset: ws\n  split: train\n")
    (a / "run" / "checkpoints" / "step_00000004" / "progress.json").write_text(json.dumps({"working_dir": str(a)}))
    monkeypatch.chdir(b)
    trained = training_data_of("../A/run/final")
    assert trained["dataset"] == str(a / "ws")
    assert training_overlap(trained, "../A/ws", "train") is not None
    assert training_overlap(trained, "ws", "train") is None  # B's own folder of the same name
    exported = b / "exported"  # an `aft-hf export` folder records the working directory itself
    exported.mkdir()
    (exported / "aft_config.yaml").write_text("data:\n  dataset: ws\n")
    (exported / "aft_checkpoint.json").write_text(json.dumps({"step": 2, "working_dir": str(a)}))
    assert training_data_of(str(exported))["dataset"] == str(a / "ws")
