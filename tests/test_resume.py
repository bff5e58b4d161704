"""Resume rules: the one table of what a resume may change, the same image after a new batch
geometry, and the evaluation history kept across resumes."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import aft_hf.train as train_mod
from aft_hf.config import ConfigError, leaf_paths, load_config
from aft_hf.data.loading import EpochSampler, epoch_position
from aft_hf.resume import RESUME_RULES, Change, check_resume_config, classify_changes, kind_of
from aft_hf.train import train

N_IMAGES = 21


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """21 solid images, image i of red level 10 i: a trained batch names its images."""
    folder = tmp_path_factory.mktemp("numbered") / "imgs"
    (folder / "a").mkdir(parents=True)
    for i in range(N_IMAGES):
        Image.fromarray(np.full((36, 40, 3), (10 * i, 0, 0), dtype=np.uint8)).save(folder / "a" / f"{i:03d}.png")
    return folder


def cfg_for(model, data, out, *extra):
    return load_config(None, [
        "--model.name_or_path", str(model), "--data.dataset", str(data), "--output_dir", str(out),
        "--warmup_steps", "0", "--lr", "1e-4", "--attack.steps", "1", "--logging.report_to", "none",
        "--log_every", "1", "--checkpointing_steps", "100", *extra])


@pytest.fixture
def trained(monkeypatch):
    """(epoch, image id) of every image trained, in order."""
    seen = []
    original = train_mod.TrainingLoop.micro_step

    def spy(self, batch):
        ids = (batch["pixel_values"][:, 0, 0, 0] * 255 / 10).round().int().tolist()
        seen.extend((self.progress.epoch, i) for i in ids)
        return original(self, batch)

    monkeypatch.setattr(train_mod.TrainingLoop, "micro_step", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [
    (["--optim.batch_size", "4"], ["--optim.batch_size", "8"]),     # larger batch
    (["--optim.batch_size", "4"], ["--optim.batch_size", "3"]),     # smaller, not a divisor of the position
    (["--optim.batch_size", "4"], ["--optim.batch_size", "4", "--gradient_accumulation_steps", "2"]),
    (["--optim.batch_size", "4", "--gradient_accumulation_steps", "2"], ["--optim.batch_size", "4"]),
    (["--optim.batch_size", "4", "--gradient_accumulation_steps", "2"],
     ["--optim.batch_size", "6", "--gradient_accumulation_steps", "3"]),
])
def test_new_batch_geometry_resumes_at_the_same_image(tiny_clip_path, numbered, tmp_path, trained, before, after):
    """The issue: skip_first_batches counted batches of the new size (21 images: records_in_epoch 24).
    Now epoch 0 is one permutation, and the resumed leg continues it at the 8th image: no image twice,
    none skipped (only the tail that does not fill a batch, as in any epoch)."""
    train(cfg_for(tiny_clip_path, numbered, tmp_path / "run", "--max_steps", "2", *before))
    first = list(trained)
    assert len(first) == 8 and all(e == 0 for e, _ in first)
    trained.clear()
    train(cfg_for(tiny_clip_path, numbered, tmp_path / "run", "--max_steps", "6", "--resume_from_checkpoint",
                  "latest", "--allow_config_change", *after))
    new_batch = int(after[after.index("--optim.batch_size") + 1])
    rest = [i for e, i in trained if e == 0]
    assert len(rest) == (N_IMAGES - 8) // new_batch * new_batch
    order = [i for _, i in first] + rest
    assert len(set(order)) == len(order)  # no image trained twice in the epoch
    trained.clear()  # an uninterrupted run with the old geometry sees the same order
    train(cfg_for(tiny_clip_path, numbered, tmp_path / "ref", "--max_steps", "5", "--optim.batch_size", "4"))
    reference = [i for e, i in trained if e == 0]
    assert reference == order[:len(reference)] or order == reference[:len(order)]
    progress = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1].joinpath(
        "progress.json").read_text())
    assert progress["step"] == 6
    if progress["epoch"] == 0:  # the saved position counts the images of both legs
        assert sum(progress["records_per_process"]) == len(order)


def test_resume_past_max_steps_is_refused_and_the_run_is_kept(tiny_clip_path, numbered, tmp_path):
    """A resume whose max_steps is below the checkpoint's step would train nothing and re-export the checkpoint as a
    shorter run (its card saying fewer steps than were trained): refused in one message, even with
    --allow_config_change, and the run already written stays as it was."""
    out = tmp_path / "run"
    train(cfg_for(tiny_clip_path, numbered, out, "--max_steps", "2", "--optim.batch_size", "4"))
    final = (out / "final" / "aft_config.yaml").read_text()
    with pytest.raises(ConfigError, match="is at step 2, past max_steps 1: resume with --max_steps 2 or more"):
        train(cfg_for(tiny_clip_path, numbered, out, "--max_steps", "1", "--optim.batch_size", "4",
                      "--resume_from_checkpoint", "latest", "--allow_config_change"))
    assert (out / "final" / "aft_config.yaml").read_text() == final
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000002"]



def test_a_resume_without_its_config_names_the_differences_not_the_default_model(tiny_clip_path, numbered, tmp_path,
                                                                                monkeypatch):
    """`train --resume_from_checkpoint latest --output_dir run` without --config: the defaults' Hub model was loaded
    first (offline: "could not load model 'openai/...'"); the saved config is compared first, and names itself."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    train(cfg_for(tiny_clip_path, numbered, out, "--max_steps", "1", "--optim.batch_size", "4"))
    with pytest.raises(ConfigError) as e:
        train(load_config(None, ["--resume_from_checkpoint", "latest", "--output_dir", str(out)]))
    assert "model.name_or_path: " in str(e.value) and "-> 'openai/clip-vit-base-patch16'" in str(e.value)
    saved = out / "checkpoints" / "step_00000001" / "aft_config.yaml"
    assert f"--config {saved} holds them" in str(e.value)
    train(load_config(saved, ["--resume_from_checkpoint", "latest", "--output_dir", str(out)]))  # as it says


def test_settings_changed_on_resume_reach_the_exported_folder_and_its_card(tiny_clip_path, numbered, tmp_path):
    """aft_config.yaml holds the last values; what a resume changed (and from which step) is exported beside it and
    said on the card, so the card does not present the last learning rate as the whole run's."""
    from aft_hf.card import build_model_card

    out = tmp_path / "run"
    train(cfg_for(tiny_clip_path, numbered, out, "--max_steps", "2", "--optim.batch_size", "4",
                  "--checkpointing_steps", "1"))
    assert not (out / "final" / "config_changes.json").exists()
    train(cfg_for(tiny_clip_path, numbered, out, "--max_steps", "3", "--optim.batch_size", "4", "--lr", "5e-5",
                  "--resume_from_checkpoint", "latest", "--allow_config_change"))
    changes = json.loads((out / "final" / "config_changes.json").read_text())
    assert [c["step"] for c in changes] == [2] and any("lr" in x for x in changes[0]["changes"])
    card = str(build_model_card(out / "final", "me/model"))
    assert "The run was resumed with changed settings" in card and "- from step 2:" in card


def test_resume_latest_without_a_checkpoint_warns(tiny_clip_path, numbered, tmp_path, caplog):
    """--resume_from_checkpoint latest into an output_dir with no checkpoint (a first launch, or a mistyped folder)
    starts from scratch with a warning, not an INFO line a user would miss."""
    import logging

    with caplog.at_level(logging.WARNING, logger="aft_hf.train"):
        train(cfg_for(tiny_clip_path, numbered, tmp_path / "run_typo", "--max_steps", "1", "--optim.batch_size", "4",
                      "--resume_from_checkpoint", "latest"))
    assert any(r.levelno == logging.WARNING and "no checkpoint under" in r.getMessage() for r in caplog.records)


def test_epoch_position_and_sampler():
    assert epoch_position([8, 8], 8, 2) == 16  # every process's count, summed
    assert epoch_position(None, 6, 2) == 12  # an older checkpoint: this process's count x processes
    sampler = EpochSampler(10, seed=3)
    whole = list(sampler)
    sampler.resume_at(4)
    assert len(sampler) == 6 and list(sampler) == whole[4:]
    assert list(sampler) == whole  # the offset is for one pass only
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(10)) and list(sampler) != whole


@pytest.mark.slow
def test_eval_history_survives_resumes(tiny_vision_path, numbered, tmp_path):
    """The issue: steps [0, 2, 4] became [6]; a resume with nothing left wrote eval null and []."""
    args = ["--optim.batch_size", "4", "--eval.every_steps", "2", "--eval.num_samples", "4"]
    out = tmp_path / "run"

    def steps():
        summary = json.loads((out / "train_summary.json").read_text())
        return [h["step"] for h in summary["eval_history"]], summary["eval"]

    train(cfg_for(tiny_vision_path, numbered, out, "--max_steps", "4", *args))
    assert steps()[0] == [0, 2, 4]
    train(cfg_for(tiny_vision_path, numbered, out, "--max_steps", "6", "--resume_from_checkpoint", "latest", *args))
    assert steps()[0] == [0, 2, 4, 6]
    train(cfg_for(tiny_vision_path, numbered, out, "--max_steps", "6", "--resume_from_checkpoint", "latest", *args))
    history, last = steps()
    assert history == [0, 2, 4, 6] and last["step"] == 6
    # evaluation turned off for a resume: the earlier evaluations are still the run's
    train(cfg_for(tiny_vision_path, numbered, out, "--max_steps", "7", "--resume_from_checkpoint", "latest",
                  "--optim.batch_size", "4"))
    assert steps()[0] == [0, 2, 4, 6]


def test_every_field_has_a_rule():
    unruled = [p for p in leaf_paths() if p not in RESUME_RULES and p.split(".")[0] not in RESUME_RULES]
    assert unruled == []


@pytest.mark.parametrize("field, value, kind", [
    ("eval.every_steps", 5, Change.FREE), ("logging.log_every", 3, Change.FREE),
    ("hub.private", True, Change.FREE), ("checkpoint.checkpointing_steps", 7, Change.FREE),
    ("perf.compile", True, Change.FREE), ("data.num_workers", 2, Change.FREE), ("optim.max_steps", 50_000, Change.RECORDED),
    ("optim.max_steps", 10_000, Change.FLAG), ("optim.lr", 0.5, Change.FLAG), ("optim.batch_size", 64, Change.FLAG),
    ("optim.gradient_accumulation_steps", 2, Change.FLAG), ("optim.scheduler", "constant", Change.FLAG),
    ("seed", 7, Change.FLAG),
    ("model.name_or_path", "other/model", Change.NEVER), ("model.embedding", "patch_tokens", Change.NEVER),
    ("model.output_normalize", False, Change.NEVER), ("data.dataset", "other", Change.NEVER),
    ("data.split", "test", Change.NEVER), ("attack.eps", 8.0, Change.NEVER), ("attack.norm", "l2", Change.NEVER),
])
def test_changes_fall_in_four_kinds(field, value, kind):
    saved = load_config(None, []).to_dict()
    section, _, leaf = field.rpartition(".")
    new = load_config(None, [f"--{field}", json.dumps(value) if not isinstance(value, str) else value])
    assert getattr(getattr(new, section) if section else new, leaf) == value
    changes = classify_changes(saved, new)
    assert [c.split(":")[0] for c in changes[kind]] == [field]
    assert sum(len(v) for v in changes.values()) == 1


def _checkpoint_with(tmp_path, **saved_overrides):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    saved = load_config(None, [a for k, v in saved_overrides.items() for a in (f"--{k}", str(v))])
    (ckpt / "aft_config.yaml").write_text(saved.to_yaml())
    return ckpt


def test_never_fields_refused_even_with_the_flag(tmp_path):
    """The issue: --allow_config_change accepted another model.name_or_path silently."""
    ckpt = _checkpoint_with(tmp_path)
    new = load_config(None, ["--model.name_or_path", "other/model", "--allow_config_change"])
    with pytest.raises(ConfigError, match="not even with --allow_config_change") as e:
        check_resume_config(ckpt, new)
    assert "model.name_or_path: 'openai/clip-vit-base-patch16' -> 'other/model'" in str(e.value)


def test_free_fields_need_no_flag_and_flag_fields_are_returned(tmp_path):
    """The issue: turning evaluation on for a resumed run needed --allow_config_change."""
    ckpt = _checkpoint_with(tmp_path)
    assert check_resume_config(ckpt, load_config(None, ["--eval.every_steps", "10", "--log_every", "3"])) == []
    with pytest.raises(ConfigError, match="optim.lr"):
        check_resume_config(ckpt, load_config(None, ["--lr", "0.5"]))
    assert check_resume_config(ckpt, load_config(None, ["--lr", "0.5", "--allow_config_change"])) == \
        ["optim.lr: 1e-05 -> 0.5"]
    # training longer needs no flag, but reshapes the schedule: recorded (the card described one schedule)
    longer = str(load_config(None, []).optim.max_steps * 2)
    assert check_resume_config(ckpt, load_config(None, ["--max_steps", longer])) == \
        [f"optim.max_steps: {load_config(None, []).optim.max_steps} -> {longer}"]


def test_two_spellings_of_one_folder_are_no_change(tmp_path, monkeypatch):
    (tmp_path / "m48").mkdir()
    monkeypatch.chdir(tmp_path)
    ckpt = _checkpoint_with(tmp_path, **{"model.name_or_path": "m48"})
    assert check_resume_config(ckpt, load_config(None, ["--model.name_or_path", str(tmp_path / "m48")])) == []


def test_saved_relative_paths_are_relative_to_the_run_that_saved_them(tiny_clip_path, numbered, tmp_path, monkeypatch,
                                                                     single_thread):
    """The issue: a run started in /tmp/x with `--data.dataset ./imgs` was refused as a "never" change when resumed
    from /tmp/x/out with `--data.dataset /tmp/x/imgs` (the saved './imgs' was resolved against /tmp/x/out)."""
    work = tmp_path / "x"
    work.mkdir()
    (work / "imgs").symlink_to(numbered, target_is_directory=True)
    (work / "model").symlink_to(tiny_clip_path, target_is_directory=True)
    monkeypatch.chdir(work)
    train(cfg_for("./model", "./imgs", "./out/sp/", "--optim.batch_size", "4", "--max_steps", "1"))
    monkeypatch.chdir(work / "out")
    (work / "out" / "imgs").mkdir()  # another folder under the saved spelling: still another data set
    with pytest.raises(ConfigError, match=r"data.dataset: './imgs' -> '.*/x/out/imgs'"):
        train(cfg_for("../model", work / "out" / "imgs", "sp", "--optim.batch_size", "4", "--max_steps", "2",
                      "--resume_from_checkpoint", "latest"))
    with pytest.raises(ConfigError, match=r"data.dataset: './imgs' in .*/x -> './imgs' in .*/x/out \(another folder\)"):
        train(cfg_for("../model", "./imgs", "sp", "--optim.batch_size", "4", "--max_steps", "2",
                      "--resume_from_checkpoint", "latest"))
    final = train(cfg_for(work / "model", work / "imgs", "sp", "--optim.batch_size", "4", "--max_steps", "2",
                          "--resume_from_checkpoint", "latest"))
    assert json.loads((final.parent / "train_summary.json").read_text())["steps"] == 2


def test_kind_of_sections_and_fields():
    assert kind_of("lora.r") is Change.NEVER
    assert kind_of("data.num_workers") is Change.FREE and kind_of("data.dataset") is Change.NEVER
    assert kind_of("brand_new_section.x") is Change.FLAG
    assert yaml.safe_load(load_config(None, []).to_yaml())  # the saved form the rules compare


def test_docs_table_lists_every_rule():
    """docs/training.md shows the table of RESUME_RULES: every entry, in its kind's row."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in {k.value for k in Change}}
    for key, kind in RESUME_RULES.items():
        assert f"`{key}" in rows[kind.value], (key, kind)


@pytest.mark.parametrize("processes, per_device", [(2, 2), (3, 1), (2, 3)])
def test_sharded_resume_continues_the_permutation(processes, per_device):
    """What accelerate.prepare does with the sampler on N processes (BatchSamplerShard): resumed at record R,
    global micro-batch j is records [R + j B, R + (j + 1) B) of the epoch's permutation, split over ranks."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    n, start = 21, 8
    sampler = EpochSampler(n, seed=5)
    order = sampler.order(0)
    shards = []
    for rank in range(processes):
        sampler.resume_at(start)
        batches = BatchSamplerShard(BatchSampler(sampler, per_device, drop_last=True), processes, rank)
        shards.append(list(batches))
    global_batch = processes * per_device
    steps = min(len(s) for s in shards)
    assert steps == (n - start) // global_batch
    for j in range(steps):
        drawn = [i for rank in range(processes) for i in shards[rank][j]]
        assert drawn == order[start + j * global_batch:start + (j + 1) * global_batch]
