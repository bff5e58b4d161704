"""A small training run (16 images, 8 steps, checkpoints every 2) and a strict JSON reader, shared by the
training tests."""

import json
from pathlib import Path

from aft_hf.config import load_config


def small_args(model, data, *extra):
    """8 steps of 4 images over 16 images (mid-epoch checkpoints every 2 steps, 2 kept)."""
    return ["--model.name_or_path", str(model), "--data.dataset", str(data), "--optim.batch_size", "4",
            "--max_steps", "8", "--warmup_steps", "1", "--lr", "1e-3", "--attack.steps", "2",
            "--logging.report_to", "none", "--log_every", "1", "--checkpointing_steps", "2",
            "--checkpoints_total_limit", "2", "--cpu", "true", *extra]


def small_cfg(model, data, out, *extra):
    return load_config(None, small_args(model, data, "--output_dir", str(out), *extra))


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"bare {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


class Interrupt(Exception):
    """Raised by :func:`crash_after_checkpoint`: a run that stopped right after a checkpoint."""


def crash_after_checkpoint(monkeypatch, step: int) -> None:
    """Make training raise :class:`Interrupt` right after it saved the checkpoint of ``step`` (as a crash would);
    ``monkeypatch.undo()`` or a new ``setattr`` restores the real save."""
    import aft_hf.train as train_mod

    save = train_mod.save_checkpoint

    def save_then_crash(accelerator, progress, *args):
        path = save(accelerator, progress, *args)
        if progress.step == step:
            raise Interrupt
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_crash)
