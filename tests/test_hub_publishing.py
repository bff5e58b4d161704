"""Publishing correctness (issue 20): a card only shows numbers measured on its own weights, every model of
an evaluation keeps its own report, card snippets run, and nothing local reaches the Hub. All offline."""

import json

import pytest
import torch

from aft_hf.cli import main
from aft_hf.config import TrainConfig


def _error(capsys) -> str:
    """The CLI's one-line error, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, single_thread):
    """A world sample, and a "fine-tune" of builtin:world-clip (weights moved) in a local folder named world-clip."""
    from aft_hf.model import export_pretrained, load_image_encoder

    root = tmp_path_factory.mktemp("pub")
    assert main(["world", "sample", "--out", str(root / "ws"), "-n", "8"]) == 0
    encoder = load_image_encoder("builtin:world-clip")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.vision.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    cfg = TrainConfig()
    cfg.model.name_or_path = "builtin:world-clip"
    tuned = export_pretrained(encoder, root / "local" / "world-clip", extra_files={"aft_config.yaml": cfg.to_yaml()})
    return root, tuned


@pytest.fixture(scope="module")
def evaluations(world):
    """The base alone, and base + fine-tune together (both map to the sub-folder name world-clip)."""
    root, tuned = world
    args = ["--dataset", str(root / "ws"), "--metrics", "zeroshot", "--methods", "saliency"]
    assert main(["evaluate", "--model", "builtin:world-clip", *args, "--out", str(root / "base_ev")]) == 0
    assert main(["evaluate", "--model", "builtin:world-clip", "--model", str(tuned), *args,
                 "--out", str(root / "both")]) == 0
    return root / "base_ev" / "report.json", root / "both"


@pytest.mark.slow
def test_same_folder_name_gets_two_folders(evaluations, world):
    """Issue 20.8: builtin:world-clip and a local world-clip/ wrote one report over the other."""
    _, both = evaluations
    _, tuned = world
    a, b = (json.loads((both / d / "report.json").read_text()) for d in ("world-clip", "world-clip_2"))
    assert (a["model"], a["label"]) == ("builtin:world-clip", "world-clip")
    assert (b["model"], b["label"]) == (str(tuned), "world-clip#2")
    assert a["weights_sha256"] != b["weights_sha256"]
    comparison = (both / "comparison.md").read_text()
    assert "(world-clip/report.md)" in comparison and "(world-clip_2/report.md)" in comparison
    rows = json.loads((both / "report.json").read_text())["reports"]
    assert [r["label"] for r in rows] == ["world-clip", "world-clip#2"]
    assert rows[1]["figures"]["examples"] == "world-clip_2/examples.png"


@pytest.mark.slow
def test_labels_name_reports_and_folders(world, tmp_path, capsys):
    root, tuned = world
    args = ["--dataset", str(root / "ws"), "--metrics", "zeroshot", "--methods", "saliency"]
    assert main(["evaluate", "--model", str(tuned), "--model", f"{tuned}/", "--label", "aft", "--label", "aft again",
                 *args, "--out", str(tmp_path / "l")]) == 0
    assert json.loads((tmp_path / "l" / "aft_again" / "report.json").read_text())["label"] == "aft again"
    assert json.loads((tmp_path / "l" / "aft" / "report.json").read_text())["label"] == "aft"
    for bad in (["--label", "x"], ["--label", "x", "--label", "x"]):
        assert main(["evaluate", "--model", str(tuned), "--model", str(tuned), *bad, *args,
                     "--out", str(tmp_path / "bad")]) == 2
        assert "--label" in _error(capsys)


@pytest.mark.slow
def test_push_takes_only_the_row_of_the_pushed_weights(evaluations, world, tmp_path, capsys):
    """Issue 20.1: the base model's numbers went on the fine-tune's card."""
    base_report, both = evaluations
    _, tuned = world
    push = ["push", str(tuned), "--repo-id", "me/wc-aft", "--dry-run"]
    assert main([*push, "--report", str(base_report), "--out", str(tmp_path / "a")]) == 2
    err = _error(capsys)
    assert "has no row for" in err and "builtin:world-clip" in err and f"aft-hf evaluate --model {tuned}" in err
    assert not (tmp_path / "a").exists()

    assert main([*push, "--report", str(both / "report.json"), "--out", str(tmp_path / "b")]) == 0
    card_report = json.loads((tmp_path / "b" / "eval_report.json").read_text())
    mine = json.loads((both / "world-clip_2" / "report.json").read_text())
    assert card_report["model"] == "local:world-clip" and card_report["metrics"] == mine["metrics"]
    assert card_report["weights_sha256"] == mine["weights_sha256"]
    assert (tmp_path / "b" / "assets" / "examples.png").is_file()

    # a report of an earlier aft_hf (no weights hash) only with the explicit flag
    old = json.loads(base_report.read_text())
    del old["weights_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main([*push, "--report", str(tmp_path / "old.json"), "--out", str(tmp_path / "c")]) == 2
    assert "--allow-unverified-report" in _error(capsys)
    assert main([*push, "--report", str(tmp_path / "old.json"), "--allow-unverified-report",
                 "--out", str(tmp_path / "c")]) == 0
    # several models and no hashes: only the row that names the folder
    rows = json.loads((both / "report.json").read_text())
    for r in rows["reports"]:
        del r["weights_sha256"]
    (tmp_path / "old_both.json").write_text(json.dumps(rows))
    assert main([*push, "--report", str(tmp_path / "old_both.json"), "--allow-unverified-report",
                 "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "eval_report.json").read_text())["label"] == "world-clip#2"


# --------------------------------------------------------------------------- cards whose snippets run (issue 20.2)

REPO = "me/tiny-aft"


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory, tiny_clip_path, tiny_vision_path, single_thread):
    """Exports of a full CLIPModel, a CLIPVisionModelWithProjection and a bare CLIPVisionModel (trained on
    patch tokens, the LLaVA case, or on its pooled output), each with the recipe the trainer writes."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from aft_hf.model import export_pretrained, load_image_encoder

    root = tmp_path_factory.mktemp("kinds")
    bare = root / "bare_base"
    CLIPVisionModel.from_pretrained(tiny_clip_path).save_pretrained(bare)
    CLIPImageProcessor.from_pretrained(tiny_clip_path).save_pretrained(bare)
    folders = {}
    for kind, base, embedding in (("CLIPModel", tiny_clip_path, "pooled"),
                                  ("CLIPVisionModelWithProjection", tiny_vision_path, "pooled"),
                                  ("CLIPVisionModel", bare, "patch_tokens"),
                                  ("CLIPVisionModel, pooled", bare, "pooled")):
        cfg = TrainConfig()
        cfg.model.name_or_path, cfg.model.embedding = str(base), embedding
        encoder = load_image_encoder(str(base), embedding=embedding)
        folders[kind] = export_pretrained(encoder, root / kind.replace(", ", "_"), extra_files={"aft_config.yaml": cfg.to_yaml()})
    return folders


def _python_snippets(card_text: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["CLIPModel", "CLIPVisionModelWithProjection", "CLIPVisionModel",
                                  "CLIPVisionModel, pooled"])
def test_every_card_snippet_runs(three_kinds, kind, tmp_path, monkeypatch):
    """Every python block of the generated card runs on the Hub folder (its repo id pointed at the folder)."""
    import numpy as np
    from PIL import Image

    from aft_hf.hub import prepare_hub_folder

    out = prepare_hub_folder(three_kinds[kind], tmp_path / "hub", repo_id=REPO)
    snippets = _python_snippets((out / "README.md").read_text())
    assert len(snippets) == 2  # transformers and aft_hf
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save("cat.jpg")
    for code in snippets:
        namespace: dict = {}
        exec(compile(code.replace(f'"{REPO}"', repr(str(out))), f"<{kind} card>", "exec"), namespace)
        assert namespace.get("embeddings") is not None or namespace.get("features") is not None
        if "features" in namespace:  # the LLaVA features: (1, patches, width)
            assert namespace["features"].shape[1] == (32 // 8) ** 2


@pytest.mark.slow
def test_bare_vision_tower_card_says_what_it_is(three_kinds, tmp_path):
    from aft_hf.hub import prepare_hub_folder

    text = (prepare_hub_folder(three_kinds["CLIPVisionModel"], tmp_path / "hub", repo_id=REPO)
            / "README.md").read_text()
    assert "a bare image tower (`CLIPVisionModel`" in text
    assert "CLIPVisionModelWithProjection" not in text  # it would load a random visual_projection
    assert "export-openclip" not in text  # which refuses a folder without projection
    assert "patch-token features" in text and "penultimate layer" in text  # the objective that was trained
    assert 'load_image_encoder("me/tiny-aft", embedding="patch_tokens")' in text
    import shutil

    import yaml

    last = shutil.copytree(three_kinds["CLIPVisionModel"], tmp_path / "last_layer")  # a run for another VLM layer
    recipe = yaml.safe_load((last / "aft_config.yaml").read_text())
    recipe["model"]["feature_layer"] = -1
    (last / "aft_config.yaml").write_text(yaml.safe_dump(recipe))
    text = (prepare_hub_folder(last, tmp_path / "hub_last", repo_id=REPO) / "README.md").read_text()
    assert "hidden state -1 (`model.feature_layer`)" in text and "penultimate" not in text.split("## Usage")[0]
    assert 'load_image_encoder("me/tiny-aft", embedding="patch_tokens", feature_layer=-1)' in text
    pooled = (prepare_hub_folder(three_kinds["CLIPVisionModel, pooled"], tmp_path / "pooled", repo_id=REPO)
              / "README.md").read_text()
    assert "the pooled output itself for a tower without projection" in pooled and "patch-token" not in pooled
    assert 'load_image_encoder("me/tiny-aft")' in pooled and "export-openclip" not in pooled
    full = (prepare_hub_folder(three_kinds["CLIPModel"], tmp_path / "full", repo_id=REPO) / "README.md").read_text()
    assert "export-openclip" in full and "patch-token" not in full and "a full `CLIPModel`" in full


# --------------------------------------------------------------------------- what leaves the machine (issue 20.10)


class RemoteHub:
    """HfApi.create_repo/upload_folder replaced by a copy into a local "remote" folder (no network);
    ``fail`` makes every upload raise as an unreachable Hub does."""

    def __init__(self, monkeypatch, remote, fail=False):
        import shutil

        from huggingface_hub import HfApi

        from aft_hf import hub_sync

        self.remote, self.calls = remote, []

        def create_repo(api, repo_id, **kw):
            if fail:
                raise ConnectionError("Failed to resolve 'huggingface.co'")
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, path_in_repo=None, **kw):
            self.calls.append(path_in_repo)
            if fail:
                raise ConnectionError("Failed to resolve 'huggingface.co'")
            dest = remote / (path_in_repo or "")
            if path_in_repo:
                shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(folder_path, dest, dirs_exist_ok=True)
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/x"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setenv("HF_TOKEN", "hf_FAKEtokenFORtests0123456789abcdef")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the trainer refuses to start a push run in offline mode
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_sync, "RETRY_DELAYS_S", (0.0, 0.0))


def _train_args(model, data, out, *extra):
    return ["--model.name_or_path", str(model), "--data.dataset", str(data), "--optim.batch_size", "4",
            "--max_steps", "4", "--warmup_steps", "0", "--attack.steps", "1", "--logging.report_to", "none",
            "--checkpointing_steps", "2", "--cpu", "true", "--checkpoint.output_dir", str(out), *extra]


@pytest.mark.slow
def test_uploads_hold_no_local_paths_and_a_pushed_checkpoint_resumes_elsewhere(tiny_clip_path, tmp_path,
                                                                                monkeypatch, single_thread):
    import shutil

    import yaml

    from aft_hf.config import ConfigError, load_config
    from aft_hf.train import train
    from tests.image_helpers import write_png_folder

    here = tmp_path / "machine_a"
    model = shutil.copytree(tiny_clip_path, here / "models" / "tiny-base")
    data = write_png_folder(here / "data" / "imgs", 16)
    remote = tmp_path / "hub_repo"
    RemoteHub(monkeypatch, remote)
    train(load_config(None, _train_args(model, data, here / "run", "--hub.push_to_hub", "--hub.hub_model_id",
                                        "me/run", "--hub.strategy", "checkpoint")))
    texts = {p.relative_to(remote).as_posix(): p.read_text() for p in remote.rglob("*")
             if p.is_file() and p.suffix in (".yaml", ".json", ".md")}
    assert "aft_config.yaml" in texts and "last-checkpoint/aft_config.yaml" in texts
    for name, text in texts.items():
        assert str(tmp_path) not in text, name  # no absolute local path anywhere on the Hub
    pushed = yaml.safe_load(texts["aft_config.yaml"])
    assert pushed["model"]["name_or_path"] == "local:tiny-base" and pushed["data"]["dataset"] == "local:imgs"
    assert pushed["checkpoint"]["output_dir"] == "local:run"
    assert "local folder tiny-base" in texts["README.md"]
    # the local files keep their real paths (they are the user's record)
    assert yaml.safe_load((here / "run" / "final" / "aft_config.yaml").read_text())["model"]["name_or_path"] == \
        str(model)

    # machine B: the checkpoint from the Hub, the model and data at other places, given again on the command line
    there = tmp_path / "machine_b"
    model_b = shutil.copytree(model, there / "elsewhere" / "tiny-base")
    data_b = shutil.copytree(data, there / "images" / "imgs")
    resume = ["--resume_from_checkpoint", str(remote / "last-checkpoint"), "--max_steps", "6"]
    final = train(load_config(None, _train_args(model_b, data_b, there / "run", *resume)))
    summary = json.loads((there / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 6 and (final / "model.safetensors").is_file()
    # as docs/publishing.md says it: the run's own recipe from the checkpoint, the local paths on the command line
    recipe = remote / "last-checkpoint" / "aft_config.yaml"
    final = train(load_config(recipe, ["--model.name_or_path", str(model_b), "--data.dataset", str(data_b),
                                       "--checkpoint.output_dir", str(there / "run3"), *resume]))
    assert json.loads((there / "run3" / "train_summary.json").read_text())["steps"] == 6
    # another model folder is not the one the checkpoint was trained from
    other = shutil.copytree(model, there / "other-model")
    with pytest.raises(ConfigError, match="model.name_or_path: 'local:tiny-base'"):
        train(load_config(None, _train_args(other, data_b, there / "run2", *resume)))


# --------------------------------------------------------------------------- no network (issue 20.15)


@pytest.mark.slow
def test_unreachable_hub_bounds_the_wait_names_the_command_and_cleans_up(tiny_clip_path, tmp_path, monkeypatch,
                                                                        caplog, single_thread):
    import logging
    import time

    from aft_hf import hub_sync
    from aft_hf.config import load_config
    from aft_hf.hub import HubError
    from aft_hf.train import train
    from tests.image_helpers import write_png_folder

    data = write_png_folder(tmp_path / "imgs", 16)
    RemoteHub(monkeypatch, tmp_path / "remote", fail=True)
    monkeypatch.setattr(hub_sync, "RETRY_DELAYS_S", (120.0, 120.0))  # would block 4 minutes without the bound
    caplog.set_level(logging.INFO, logger="aft_hf.hub_sync")
    run = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(HubError) as e:  # the final push fails too: it names the command that retries it
        train(load_config(None, _train_args(tiny_clip_path, data, run, "--hub.push_to_hub", "--hub.hub_model_id",
                                            "me/run", "--hub.strategy", "checkpoint", "--hub.upload_timeout_s", "1")))
    assert time.monotonic() - start < 100
    assert f"`aft-hf push {run.resolve() / 'final'} --repo-id me/run`" in str(e.value)
    assert "could not reach the Hub" in str(e.value) and "aft_hf_hub_" not in str(e.value)
    assert "at most 1s: hub.upload_timeout_s" in caplog.text and "checkpoint of step 4 (pending)" in caplog.text
    assert "the Hub kept failing for hub.upload_timeout_s=1s" in caplog.text
    assert "last-checkpoint of step 2 (pending)" in caplog.text
    assert "model of step 2 (failed: could not push the model of step 2 to 'me/run': could not reach" in caplog.text
    assert f"aft-hf push {run / 'final'} --repo-id me/run" in caplog.text
    assert not (run / hub_sync.STAGING_DIR).exists()
    assert (run / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_strategy_end_failure_names_the_push_command(tiny_clip_path, tmp_path, monkeypatch, single_thread):
    from aft_hf.config import load_config
    from aft_hf.hub import HubError
    from aft_hf.train import train
    from tests.image_helpers import write_png_folder

    data = write_png_folder(tmp_path / "imgs", 16)
    RemoteHub(monkeypatch, tmp_path / "remote", fail=True)
    run = tmp_path / "run"
    with pytest.raises(HubError) as e:
        train(load_config(None, _train_args(tiny_clip_path, data, run, "--max_steps", "2", "--hub.push_to_hub",
                                            "--hub.hub_model_id", "me/run")))
    message = str(e.value)
    assert f"retry with `aft-hf push {run.resolve() / 'final'} --repo-id me/run`" in message
    assert "aft_hf_hub_" not in message and "\n" not in message


@pytest.mark.slow
def test_sigterm_while_waiting_cleans_up_and_exits_143(tmp_path):
    """SIGTERM during the end-of-training wait: staging removed, pending uploads named, exit code 143."""
    import os
    import signal
    import threading

    from accelerate import PartialState

    from aft_hf import hub_sync
    from aft_hf.config import load_config

    PartialState()  # the signal handler logs through accelerate, as in a training run
    cfg = load_config(None, ["--hub.push_to_hub", "--hub.hub_model_id", "me/run", "--hub.strategy", "checkpoint",
                             "--hub.upload_timeout_s", "120"])
    sync = hub_sync.HubSync(cfg, tmp_path)
    staging = tmp_path / hub_sync.STAGING_DIR / "step_00000002"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"x")
    def unreachable():
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    hub_sync.RETRY_DELAYS_S, delays = (60.0, 60.0), hub_sync.RETRY_DELAYS_S
    try:  # an upload of step 2 failing, its retry waiting 60 s
        sync.pending.append((sync.api.run_as_future(sync._retry, "model", 2, unreachable), "model of step 2"))
        sync.pending.append((sync.api.run_as_future(sync._retry, "checkpoint", 4, unreachable), "checkpoint of step 4"))
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        with pytest.raises(hub_sync.UploadsInterrupted) as e:
            sync.finish(None, 4, tmp_path / "final")
    finally:
        hub_sync.RETRY_DELAYS_S = delays
    timer.join()
    assert e.value.exit_code == 143
    assert "received SIGTERM" in str(e.value) and "model of step 2 (failed: Failed to resolve" in str(e.value)
    assert "checkpoint of step 4 (pending)" in str(e.value)  # queued behind it, never started
    assert f"aft-hf push {tmp_path / 'final'} --repo-id me/run" in str(e.value)
    assert not (tmp_path / hub_sync.STAGING_DIR).exists()
    assert signal.getsignal(signal.SIGTERM) is not sync  # the previous handler is back


def test_publishable_keeps_hub_ids_and_marks_local_paths(tmp_path, monkeypatch):
    from aft_hf.published import matches_published, publishable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    cfg = {"model": {"name_or_path": "openai/clip-vit-base-patch16", "revision": "main"},
           "data": {"dataset": "data", "data_dir": "/srv/images/train/", "split": "train"},
           "eval": {"eval_dataset": "builtin:shapes", "class_names": "./names.txt"},
           "checkpoint": {"output_dir": "runs/a/b"}, "logging": {"project_name": "aft_hf", "note": "~/x/notes"},
           "attack": {"norm": "linf"}}
    out = publishable(cfg)
    assert out["model"] == cfg["model"] and out["attack"] == cfg["attack"]
    assert out["data"] == {"dataset": "local:data", "data_dir": "local:train", "split": "train"}
    assert out["eval"] == {"eval_dataset": "builtin:shapes", "class_names": "local:names.txt"}
    assert out["checkpoint"]["output_dir"] == "local:b" and out["logging"]["note"] == "local:notes"
    assert matches_published("local:train", "/elsewhere/train") and not matches_published("local:train", "/x/test")
    assert matches_published("imagefolder", "imagefolder") and not matches_published("local:a", "/x/b")


def test_a_published_config_asks_for_the_local_paths_again():
    from aft_hf.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model.name_or_path: 'local:tiny-base' stands for a local folder .*"
                                          r"--model.name_or_path /path/to/tiny-base"):
        load_config(None, ["--model.name_or_path", "local:tiny-base"])


@pytest.mark.slow
def test_an_upload_that_goes_through_is_waited_for_past_the_timeout(tmp_path, caplog):
    """The bound is for a failing Hub: a large checkpoint that uploads slowly is not abandoned."""
    import logging
    import time

    from aft_hf import hub_sync
    from aft_hf.config import load_config

    caplog.set_level(logging.INFO, logger="aft_hf.hub_sync")
    cfg = load_config(None, ["--hub.push_to_hub", "--hub.hub_model_id", "me/run", "--hub.strategy", "checkpoint",
                             "--hub.upload_timeout_s", "0.2"])
    sync = hub_sync.HubSync(cfg, tmp_path)
    sync.pending.append((sync.api.run_as_future(sync._retry, "last-checkpoint", 4, lambda: time.sleep(1.5)),
                         "checkpoint of step 4"))
    results = sync.finish(None, 4, tmp_path / "final")
    assert results == [{"what": "last-checkpoint", "step": 4, "ok": True, "attempts": 1}]
    assert "not done" not in caplog.text
