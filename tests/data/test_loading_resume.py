"""Streaming resume is exact with unreadable files in the stream: a real kill -9 after a checkpoint."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from aft_hf.config import load_config
from aft_hf.train import list_checkpoints, train
from tests.image_helpers import write_png_folder

REPO = Path(__file__).resolve().parents[2]

# Runs training (argv: STEP then config overrides); it stops (asleep, never returning) right after
# that step's checkpoint is complete, and says so, so the test can kill -9 it there.
CHILD = """
import sys, time
import aft_hf.train as t
from aft_hf.config import load_config
hang_at = int(sys.argv[1])
save = t.save_checkpoint
def save_then_hang(accelerator, progress, *args):
    path = save(accelerator, progress, *args)
    if progress.step == hang_at:
        print("CHECKPOINTED", flush=True)
        time.sleep(600)
    return path
t.save_checkpoint = save_then_hang
t.train(load_config(None, sys.argv[2:]))
"""


def write_stream_with_bad_files(root: Path) -> Path:
    folder = write_png_folder(root, 24)
    for i in (1, 5, 9, 13):  # unreadable files spread through the (sorted, then shuffled) stream
        (folder / "a" / f"{i:03d}_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def train_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model.name_or_path", str(model), "--data.dataset", str(data), "--data.streaming", "true",
            "--data.shuffle_buffer", "8", "--data.max_bad_fraction", "0.5", "--optim.batch_size", "4",
            "--max_steps", "10", "--warmup_steps", "1", "--lr", "1e-3", "--attack.steps", "2",
            "--logging.report_to", "none", "--log_every", "5", "--checkpointing_steps", "4", "--output_dir", str(out)]


def kill_after_checkpoint(tmp_path: Path, args: list[str], step: int) -> None:
    """Train in a child process; kill -9 it once the checkpoint of ``step`` is complete."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(step), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if "CHECKPOINTED" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_streaming_resume_after_kill9_is_bitwise_exact(tiny_clip_path, tmp_path, single_thread):
    """24 readable + 4 unreadable images, batch 4: killed after step 4 (mid epoch 0, bad files already
    read), resumed to step 10 (across the epoch boundary): the weights equal an uninterrupted run's."""
    data = write_stream_with_bad_files(tmp_path / "imgs")
    full = train(load_config(None, train_args(tiny_clip_path, data, tmp_path / "full")))
    kill_after_checkpoint(tmp_path, train_args(tiny_clip_path, data, tmp_path / "killed"), 4)
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step_00000004"]
    progress = json.loads((tmp_path / "killed" / "checkpoints" / "step_00000004" / "progress.json").read_text())
    assert progress["records_per_process"][0] > 16  # 16 images delivered, unreadable records read on the way
    resumed = train(load_config(None, train_args(tiny_clip_path, data, tmp_path / "killed")
                                + ["--resume_from_checkpoint", "latest"]))
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff == 0.0, f"max |diff| {diff}"
