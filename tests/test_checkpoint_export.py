"""``aft-hf export``: a training checkpoint becomes a model folder that evaluate, explain and push read."""

import json
import logging
import shutil

import pytest
import torch
from transformers import CLIPModel, CLIPVisionModelWithProjection

from aft_hf.checkpoint_export import export_checkpoint
from aft_hf.checkpointing import CheckpointError
from aft_hf.cli import main
from aft_hf.train import train
from tests.image_helpers import write_png_folder
from tests.train_helpers import small_cfg


def _vision(folder):
    return CLIPVisionModelWithProjection.from_pretrained(folder).state_dict()


@pytest.fixture(scope="module")
def run(tiny_clip_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = write_png_folder(root / "imgs", 16)
    (data / "b").mkdir()
    for png in sorted((data / "a").glob("*.png"))[::2]:  # two classes: the evaluation has labels
        png.rename(data / "b" / png.name)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        train(small_cfg(tiny_clip_path, data, root / "run"))  # checkpoints at steps 6 and 8 are kept
    return root / "run", data


@pytest.mark.slow
def test_the_last_checkpoint_exports_the_final_model_and_an_earlier_one_its_own(run, tmp_path, capsys):
    folder, _ = run
    last = folder / "checkpoints" / "step_00000008"
    assert main(["export", str(last), "--out", str(tmp_path / "s8")]) == 0
    assert "exported: " in capsys.readouterr().out
    final, exported = _vision(folder / "final"), _vision(tmp_path / "s8")
    assert all(torch.equal(final[k], exported[k]) for k in final)  # the same weights as final/
    assert (tmp_path / "s8" / "aft_config.yaml").read_text() == (folder / "final" / "aft_config.yaml").read_text()
    CLIPModel.from_pretrained(tmp_path / "s8")  # a full CLIP, as final/: zero-shot tools read it
    assert main(["export", str(folder), "--out", str(tmp_path / "latest")]) == 0  # a run folder: its newest one
    record = json.loads((tmp_path / "latest" / "aft_checkpoint.json").read_text())
    assert {k: record[k] for k in ("step", "max_steps", "checkpoint")} == {
        "step": 8, "max_steps": 8, "checkpoint": "step_00000008"}
    earlier = export_checkpoint(folder / "checkpoints" / "step_00000006", tmp_path / "s6")
    six = _vision(earlier)
    assert any(not torch.equal(six[k], final[k]) for k in final)  # two more steps changed the weights


@pytest.mark.slow
def test_an_exported_checkpoint_is_evaluated_and_its_card_names_the_step(run, tmp_path):
    folder, data = run
    out = export_checkpoint(folder / "checkpoints" / "step_00000006", tmp_path / "s6")
    assert main(["evaluate", "--model", str(out), "--dataset", str(data), "--metrics", "zeroshot",
                 "--out", str(tmp_path / "ev")]) == 0
    assert main(["push", str(out), "--repo-id", "me/s6", "--report", str(tmp_path / "ev" / "report.json"),
                 "--dry-run", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "**These weights are the training checkpoint at step 6 of the 8 the recipe sets**" in card
    published = json.loads((tmp_path / "hub" / "aft_checkpoint.json").read_text())
    assert published["working_dir"].startswith("local:")  # the run's folder stays on this machine
    assert "not held out" in card  # evaluated on the images it trained on: said so


@pytest.mark.slow
def test_bad_exports_are_refused_in_one_line_and_lose_nothing(run, tmp_path, capsys, caplog):
    folder, _ = run
    ckpt = folder / "checkpoints" / "step_00000008"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    cases = [([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "does not exist"),
             ([str(tmp_path / "mine"), "--out", str(tmp_path / "o")], "neither a checkpoint"),
             ([str(ckpt), "--out", str(tmp_path / "mine")], "exists and is not empty"),
             ([str(ckpt), "--out", str(folder)], "is or contains the input")]
    for args, said in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and (ckpt / "model.safetensors").is_file()
    copy = tmp_path / "run_copy"  # a run whose newest checkpoint is damaged: the one before, said in a warning
    shutil.copytree(folder, copy)
    (copy / "checkpoints" / "step_00000008" / "model.safetensors").write_bytes(b"cut")
    with caplog.at_level(logging.WARNING, logger="aft_hf.checkpoint_export"):
        out = export_checkpoint(copy, tmp_path / "from_copy")
    assert "step_00000008 is damaged" in caplog.text and "the checkpoint before it is exported" in caplog.text
    assert json.loads((out / "aft_checkpoint.json").read_text())["step"] == 6
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="is damaged"):
        export_checkpoint(broken, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_a_lora_checkpoint_exports_merged_weights_and_its_adapter(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 8)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        final = train(small_cfg(tiny_clip_path, data, tmp_path / "run", "--max_steps", "2", "--lora.r", "4",
                                "--lora.alpha", "8", "--lora.save_adapter", "true"))
    out = export_checkpoint(tmp_path / "run", tmp_path / "exported")
    a, b = _vision(final), _vision(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # merged into plain weights, as final/ is: loads without peft
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_config.json").read_text() == (final / "adapter" / "adapter_config.json").read_text()


@pytest.mark.slow
def test_the_training_doc_export_commands_run(tmp_path, monkeypatch, capsys):
    """docs/training.md's export block, after the tiny recipe's first 50 steps (one checkpoint, at step 50)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    block = text.split("tests/test_checkpoint_export.py::test_the_training_doc_export_commands_run -->", 1)[1]
    commands = [shlex.split(line, comments=True) for line in re.search(r"```bash\n(.*?)```", block, re.S).group(1)
                .splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "tiny_offline", "--max_steps", "50", "--optim.batch_size", "4",
                 "--attack.steps", "2", "--logging.report_to", "none"]) == 0
    for argv in commands:
        assert argv[0] == "aft-hf"
        assert main(argv[1:]) == 0, argv
    assert json.loads(Path("out/tiny_offline/newest/aft_checkpoint.json").read_text())["step"] == 50
    assert json.loads(Path("out/ev_step50/report.json").read_text())["model"] == "out/tiny_offline/step50"


def test_what_is_no_checkpoint_is_named_before_anything_loads(tmp_path, capsys):
    """Fast: a missing folder, a folder with no checkpoints, a checkpoint written before configs were saved."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for path, said in ((tmp_path / "nowhere", "does not exist"),
                       (tmp_path / "run", "is neither a checkpoint (no progress.json) nor a run folder with checkpoints/")):
        assert main(["export", str(path), "--out", str(tmp_path / "o")]) == 2
        assert said in capsys.readouterr().err
    old = tmp_path / "run" / "checkpoints" / "step_00000002"
    old.mkdir()
    (old / "progress.json").write_text(json.dumps({"step": 2}))
    with pytest.raises(CheckpointError, match=r"has only damaged checkpoints .*\(the newest: checkpoint .*is damaged"):
        export_checkpoint(tmp_path / "run", tmp_path / "o")
    (old / "progress.json").write_text(json.dumps({"step": 2, "epoch": 0, "batches_in_epoch": 2}))
    with pytest.raises(CheckpointError, match="has no aft_config.yaml .*written before aft_hf saved configs"):
        export_checkpoint(tmp_path / "run", tmp_path / "o")
    assert not (tmp_path / "o").exists()
