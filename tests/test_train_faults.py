"""Fault injection: kill -9 at random moments (during saves too), SIGTERM, a full disk, NaN, damaged checkpoints.

After every fault the run continues from ``--resume_from_checkpoint latest`` and ends bitwise equal
to an uninterrupted run; no checkpoint that was complete is lost; nothing non-finite is written.
"""

import errno
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import aft_hf.train as train_mod
from aft_hf.checkpointing import CheckpointError, check_checkpoint, list_checkpoints
from aft_hf.guards import NonFiniteError
from aft_hf.train import train
from tests.image_helpers import write_png_folder
from tests.train_helpers import small_args, small_cfg, strict_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_png_folder(tmp_path_factory.mktemp("faults") / "imgs", 16)


@pytest.mark.slow
def test_kill9_sigterm_at_random_moments_resume_bitwise(tiny_clip_path, data, tmp_path):
    """One real subprocess forks each run: SIGKILL during a save, SIGKILL mid-step, SIGTERM, then to the end."""
    seed = int(os.environ.get("AFT_FAULT_SEED", random.randrange(10**6)))
    spec = {"args": small_args(tiny_clip_path, data), "out": str(tmp_path), "seed": seed, "max_steps": 8}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "fault_driver.py"), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in done.stdout.splitlines() if x.startswith("FAULT_REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1].split(" ", 1)[1])
    print(json.dumps(report, indent=1))  # shown with -s: faults, steps lost, files lost
    why = f"AFT_FAULT_SEED={seed}: {report}"
    assert report["reference_rc"] == 0, why
    kinds = [f["fault"].split(" ")[0] for f in report["faults"]]
    assert [f["rc"] for f in report["faults"]] == [-9 if k.startswith("kill") else 143 for k in kinds], why
    for f in report["faults"]:
        assert f["checkpoints_lost"] == [], why
        assert 0 <= f["steps_lost"] <= 2, why  # at most one checkpoint interval
    sigterm = report["faults"][-1]
    assert sigterm["steps_lost"] == 0, why  # SIGTERM saves the step it finished
    assert report["final_rc"] == 0 and report["stale_tmp_at_end"] == [], why
    assert report["bitwise_equal"], why
    assert report["summary_steps"] == 8 and report["summary_images"] == 8 * 4, why
    assert report["summary_logged_steps"] == list(range(1, 9)), why  # the whole run, across 4 resumes


@pytest.mark.slow
def test_injected_nan_step_is_skipped_and_counted(tiny_clip_path, data, tmp_path, monkeypatch):
    """NaN images at step 3: that update is skipped (weights unchanged), counted, and the run goes on."""
    step_fn, seen = train_mod.aft_step, {}

    def poisoned(accelerator, model, unwrapped, frozen, attacker, optimizer, scheduler, images, *a, **k):
        seen["n"] = seen.get("n", 0) + 1
        if seen["n"] == 3:
            images = torch.full_like(images, float("nan"))
            seen["before"] = {n: p.detach().clone() for n, p in unwrapped.named_parameters()}
        out = step_fn(accelerator, model, unwrapped, frozen, attacker, optimizer, scheduler, images, *a, **k)
        if seen["n"] == 3:
            seen["unchanged"] = all(torch.equal(p, seen["before"][n]) for n, p in unwrapped.named_parameters())
        return out

    monkeypatch.setattr(train_mod, "aft_step", poisoned)
    final = train(small_cfg(tiny_clip_path, data, tmp_path / "out", "--max_steps", "4", "--checkpointing_steps", "4"))
    assert seen["unchanged"]
    summary = strict_json(tmp_path / "out" / "train_summary.json")
    assert summary["nonfinite_steps"] == 1
    assert summary["log_history"][2]["train/loss"] == "nan"  # strict JSON: no bare NaN
    assert all(torch.isfinite(t).all() for t in load_file(final / "model.safetensors").values())


@pytest.mark.slow
@pytest.mark.parametrize("fused", ["false", "true"])
def test_divergence_stops_and_never_saves_nonfinite(tiny_clip_path, data, tmp_path, fused):
    """lr 1e30 without clipping: NonFiniteError (exit 2); checkpoints on disk are finite; no final/."""
    out = tmp_path / "out"
    cfg = small_cfg(tiny_clip_path, data, out, "--lr", "1e30", "--max_grad_norm", "null", "--log_every", "100",
                    "--checkpointing_steps", "1", "--checkpoints_total_limit", "10", "--perf.fused_adamw", fused)
    with pytest.raises(NonFiniteError, match="max_nonfinite_steps=3") as e:
        train(cfg)
    assert e.value.exit_code == 2
    assert not (out / "final").exists() and not (out / "train_summary.json").exists()
    ckpts = list_checkpoints(out)
    assert ckpts, "the finite states before the divergence are kept"
    for c in ckpts:
        assert all(torch.isfinite(t).all() for t in load_file(c / "model.safetensors").values()), c


@pytest.mark.slow
def test_full_disk_during_save_keeps_earlier_checkpoints(tiny_clip_path, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_state = Accelerator.save_state

    def disk_full_at_step_4(self, folder, *a, **k):
        save_state(self, folder, *a, **k)  # partial content on disk, then the failure
        if folder.endswith("00000004"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_step_4)
    with pytest.raises(CheckpointError, match="disk is full.*step_00000002"):
        train(small_cfg(tiny_clip_path, data, out))
    monkeypatch.setattr(Accelerator, "save_state", save_state)
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    assert not list((out / "checkpoints").glob(".tmp*"))
    assert check_checkpoint(out / "checkpoints" / "step_00000002").step == 2
    resumed = train(small_cfg(tiny_clip_path, data, out, "--resume_from_checkpoint", "latest"))
    assert (resumed / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated_weights", "bad_progress"])
def test_latest_skips_a_damaged_checkpoint(tiny_clip_path, data, tmp_path, damage, caplog):
    """The newest checkpoint is damaged: `latest` warns and resumes from the one before; an explicit
    path to it is a clear error."""
    out = tmp_path / "out"
    train(small_cfg(tiny_clip_path, data, out, "--max_steps", "4"))
    newest = list_checkpoints(out)[-1]
    if damage == "truncated_weights":
        blob = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    else:
        (newest / "progress.json").write_text('{"step": 4, "epo')
    with pytest.raises(CheckpointError, match="damaged"):
        train(small_cfg(tiny_clip_path, data, out, "--max_steps", "4", "--resume_from_checkpoint", str(newest)))
    caplog.set_level("INFO")
    train(small_cfg(tiny_clip_path, data, out, "--max_steps", "6", "--resume_from_checkpoint", "latest"))
    assert "skipping it and trying the previous checkpoint" in caplog.text
    assert "resumed from" in caplog.text and "step_00000002" in caplog.text
    summary = strict_json(out / "train_summary.json")
    assert summary["steps"] == 6 and [h["step"] for h in summary["log_history"]] == list(range(1, 7))
    assert not math.isnan(summary["log_history"][-1]["train/loss"])
