"""hub.strategy: pushes during training run in the background, are retried, never stop the run."""

import json
import logging
import threading
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from aft_hf import hub_sync
from aft_hf.config import ConfigError, load_config
from aft_hf.train import train

FAKE_TOKEN = "hf_FAKEtokenFORtests0123456789abcdef"


class FakeHub:
    """Replaces HfApi.create_repo/upload_folder; records each upload's files as they were at call time."""

    def __init__(self, monkeypatch, fail=lambda call, n: False):
        self.uploads, self.fail, self.attempts = [], fail, 0
        fake = self

        def create_repo(api, repo_id, **kw):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, **kw):
            fake.attempts += 1
            root = Path(folder_path)
            call = {"repo_id": repo_id, "path_in_repo": kw.get("path_in_repo"), "message": kw.get("commit_message"),
                    "files": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
                    "thread": threading.current_thread().name, "delete_patterns": kw.get("delete_patterns"),
                    "progress": json.loads((root / "progress.json").read_text())
                    if (root / "progress.json").is_file() else None}
            if fake.fail(call, fake.attempts):
                raise ConnectionError("the Hub is down")
            fake.uploads.append(call)
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{len(fake.uploads)}"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the trainer refuses to start a push run in offline mode
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_sync, "RETRY_DELAYS_S", (0.0, 0.0))


def cfg_for(out, strategy, *extra):
    return load_config(None, ["--model.name_or_path", "builtin:tiny-clip", "--data.dataset", "builtin:shapes",
                              "--optim.max_steps", "4", "--optim.warmup_steps", "0", "--optim.batch_size", "2",
                              "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "2",
                              "--checkpoint.output_dir", str(out), "--hub.push_to_hub", "--hub.hub_model_id",
                              "me/run", "--hub.strategy", strategy, *extra])


@pytest.mark.slow
def test_checkpoint_strategy_retries_a_failed_upload_and_pushes_last_checkpoint(tmp_path, monkeypatch, single_thread):
    fake = FakeHub(monkeypatch, fail=lambda call, n: n == 1)  # the very first upload fails once
    train(cfg_for(tmp_path / "run", "checkpoint"))
    kinds = [(u["path_in_repo"], u["message"]) for u in fake.uploads]
    assert kinds == [
        (None, "Training in progress, step 2 (aft_hf)"),  # retried after the failure
        ("last-checkpoint", "Checkpoint at step 2 (aft_hf)"),
        ("last-checkpoint", "Checkpoint at step 4 (aft_hf)"),
        (None, "Upload AFT fine-tuned CLIP (aft_hf)"),  # the final push, after every pending upload
    ]
    assert fake.attempts == 5
    step_model, ckpt = fake.uploads[0], fake.uploads[1]
    assert {"config.json", "model.safetensors", "README.md", "aft_config.yaml"} <= set(step_model["files"])
    assert "progress.json" in ckpt["files"] and ckpt["delete_patterns"] == "*"
    assert ckpt["progress"]["working_dir"].startswith("local:")  # no local path uploaded (the resume falls back)
    assert json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" / "progress.json").read_text())["step"] == 4
    assert all(u["thread"] != threading.main_thread().name for u in fake.uploads[:3])  # in the background
    assert not (tmp_path / "run" / hub_sync.STAGING_DIR).exists()  # staging cleaned up
    assert all(FAKE_TOKEN not in json.dumps(u) for u in fake.uploads)


@pytest.mark.slow
def test_every_save_upload_that_keeps_failing_never_stops_training(tmp_path, monkeypatch, caplog):
    fake = FakeHub(monkeypatch, fail=lambda call, n: call["message"].startswith("Training in progress"))
    caplog.set_level(logging.WARNING, logger="aft_hf.hub_sync")
    final = train(cfg_for(tmp_path / "run", "every_save"))
    assert (final / "model.safetensors").is_file()
    assert [u["message"] for u in fake.uploads] == ["Upload AFT fine-tuned CLIP (aft_hf)"]
    assert fake.attempts == 3 + 1  # three tries of step 2's model, then the final push
    assert "could not push model of step 2 to me/run after 3 attempts (training goes on)" in caplog.text
    assert FAKE_TOKEN not in caplog.text


def test_strategy_needs_push_to_hub_and_a_known_name():
    with pytest.raises(ConfigError, match="needs hub.push_to_hub"):
        load_config(None, ["--hub.strategy", "every_save"])
    with pytest.raises(ConfigError, match="hub.strategy: unknown value 'often'"):
        load_config(None, ["--hub.strategy", "often"])
