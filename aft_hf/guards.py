"""Run-time guards of the training loop: non-finite steps, pre-emption signals, start-up checks.

* :class:`NonFiniteGuard` skips an optimiser step whose loss or gradient norm is NaN/inf, counts
  it, and stops the run after ``optim.max_nonfinite_steps`` such steps in a row.
* :class:`StopOnSignal` turns SIGTERM/SIGINT into "finish this step, save a checkpoint, stop".
* :func:`preflight` checks, before the first step, what the end of the run will need.
"""

from __future__ import annotations

import signal
import threading
import uuid
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .checkpointing import CheckpointError, list_checkpoints, remove_stale_temporaries
from .constants import SUMMARY_FILE
from .env import hub_offline
from .errors import AftError

logger = get_logger(__name__)


class NonFiniteError(AftError, RuntimeError):
    """Training diverged: too many NaN/inf steps in a row, or non-finite weights."""


class TrainingStopped(Exception):
    """Raised by :func:`aft_hf.train.train` after a SIGTERM/SIGINT once the checkpoint is saved.

    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT), the shell convention.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to "
                         f"{checkpoint}; continue with --resume_from_checkpoint latest")


# --------------------------------------------------------------------------- non-finite steps


class NonFiniteGuard:
    """Skip and count optimiser steps whose loss or gradient norm is not finite.

    No host sync per step where the hardware allows it: the verdict stays a device tensor and is
    handed to the optimiser as ``found_inf`` (the fused AdamW kernel then leaves parameters, moments
    and its step count untouched, as it does for the fp16 grad scaler); the counters are device
    tensors read by :meth:`check` at log and checkpoint steps only. With a non-fused optimiser the
    verdict is read on the host each step (free on CPU, one sync on GPU). Under fp16 the grad
    scaler already skips steps with inf/NaN gradients (a normal event while it calibrates its
    scale), so only a non-finite loss counts there.
    """

    def __init__(self, limit: int, device: torch.device):
        self.limit = limit
        self.run = torch.zeros((), dtype=torch.long, device=device)  # current streak
        self.worst = torch.zeros((), dtype=torch.long, device=device)  # longest streak since check()
        self.total = torch.zeros((), dtype=torch.long, device=device)
        self.reported = 0

    def step(self, accelerator: Accelerator, optimizer, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> None:
        """``optimizer.step()`` unless ``loss`` / ``grad_norm`` is non-finite (then count the step)."""
        bad = ~torch.isfinite(loss.detach().float())
        scaler = getattr(accelerator, "scaler", None)
        if grad_norm is not None and scaler is None:
            bad = bad | ~torch.isfinite(grad_norm.detach().float())
        self.run.copy_((self.run + 1) * bad)
        self.worst.copy_(torch.maximum(self.worst, self.run))
        self.total.add_(bad.long())
        inner = getattr(optimizer, "optimizer", optimizer)
        if scaler is not None:
            optimizer.step()
        elif inner.defaults.get("fused"):
            inner.found_inf = bad.float()
            try:
                optimizer.step()
            finally:
                del inner.found_inf
        elif not bool(bad):  # host sync: free on CPU
            optimizer.step()
        elif int(self.run) >= self.limit:  # already synced: stop now rather than at the next log step
            self.check()

    def check(self) -> int:
        """Sync once: log newly skipped steps, raise :class:`NonFiniteError` past the limit; returns the total."""
        total, worst = int(self.total), int(self.worst)
        self.worst.copy_(self.run)
        if total > self.reported:
            logger.warning("%d optimiser step(s) skipped so far: non-finite loss or gradient norm", total,
                           main_process_only=True)
            self.reported = total
        if worst >= self.limit:
            raise NonFiniteError(
                f"training diverged: {worst} optimiser steps in a row had a non-finite loss or gradient norm "
                f"(optim.max_nonfinite_steps={self.limit}); nothing was saved from the bad state. Lower optim.lr, "
                "keep optim.max_grad_norm on, or use bf16 instead of fp16, then resume from the last checkpoint")
        return total


def require_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Refuse to save/export weights holding NaN/inf (one host sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    if flags and not bool(torch.stack(flags).all()):
        raise NonFiniteError(f"the weights hold NaN/inf values: {what} was not written (the last checkpoint is "
                             "kept); lower optim.lr or keep optim.max_grad_norm on, then resume from it")


# --------------------------------------------------------------------------- signals


class StopOnSignal:
    """Context manager: the first SIGTERM/SIGINT sets :attr:`signum` instead of killing the process.

    The loop reads it after each optimiser step, saves a checkpoint and raises :class:`TrainingStopped`.
    A second SIGINT (Ctrl-C twice) interrupts at once. Outside the main thread (where Python cannot
    install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    STEP_MESSAGE = "finishing the current step, then saving a checkpoint and stopping"

    def __init__(self, message: str = STEP_MESSAGE, event: Optional[threading.Event] = None):
        """``message``: what happens next, logged at the first signal; ``event``: also set then (for a wait
        in another thread, e.g. :class:`aft_hf.hub_sync.HubSync`'s retries)."""
        self.signum: Optional[int] = None
        self.message, self.event = message, event
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.event is not None:
                self.event.set()
            logger.warning("received %s: %s (Ctrl-C again to stop at once)", signal.Signals(signum).name,
                           self.message)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, accelerator: Accelerator, boundary: bool) -> Optional[int]:
        """The signal to stop for, agreed by every process.

        One process: checked every step. Several: checked at ``boundary`` steps only (log and checkpoint
        steps), since agreeing needs a collective; every rank must call this at the same steps.
        """
        if accelerator.num_processes == 1:
            return self.signum
        if not boundary:
            return None
        flag = torch.tensor([self.signum or 0], device=accelerator.device)
        agreed = int(accelerator.reduce(flag, "max"))
        return agreed or None


# --------------------------------------------------------------------------- start-up checks


def check_writable(output_dir: Path, process_index: int = 0) -> None:
    """Create ``output_dir`` and write/remove a probe file in it, or raise a clear error."""
    probe = output_dir / f".aft_write_probe_{process_index}_{uuid.uuid4().hex[:8]}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"checkpoint.output_dir '{output_dir}' is not writable ({e.strerror or e}); choose "
                              "another --output_dir or fix its permissions") from None


def finished_model(output_dir: Path) -> Optional[str]:
    """What of a finished run's results ``output_dir`` holds (``"final/"``, ``"train_summary.json"``), None: nothing.

    ``final/`` counts when aft_hf wrote it (its marker, or an export of an earlier version); an unrelated
    folder there is refused on its own by :func:`check_final_dir`.
    """
    from .model import _earlier_export
    from .outputs import is_marked

    final = output_dir / "final"
    held = [name for name, present in (("final/", final.is_dir() and (is_marked(final) or _earlier_export(final))),
                                       (SUMMARY_FILE, (output_dir / SUMMARY_FILE).is_file())) if present]
    return " and ".join(held) or None


def refuse_results_folder(output_dir: Path) -> None:
    """An ``evaluate`` / ``explain`` / ``benchmark`` results folder is no training run's: its model sub-folders (a
    model labelled ``final``) would be replaced, and a later ``--overwrite_output_dir`` would delete its results."""
    from .outputs import check_results_owner

    check_results_owner(output_dir, "aft-hf train", option="--output_dir")


def refuse_other_runs(output_dir: Path, resume: Optional[str], overwrite: bool) -> None:
    """A fresh run must not mix with, nor replace, another run's checkpoints or finished model
    (HF's ``overwrite_output_dir`` rule).

    ``--resume_from_checkpoint latest`` with no checkpoint left starts from scratch, so it is a fresh run
    here too: with a finished model beside it (its checkpoints deleted), it would silently replace it.
    """
    if overwrite or resume not in (None, "latest"):
        return
    found = list_checkpoints(output_dir)
    if found and resume is None:
        raise CheckpointError(
            f"checkpoint.output_dir '{output_dir}' already holds checkpoints of another run ({found[-1].name}, ...): "
            "continue it with --resume_from_checkpoint latest, or start afresh with --overwrite_output_dir "
            "(deletes those checkpoints), or choose another --output_dir")
    held = None if found else finished_model(output_dir)
    if held:
        raise CheckpointError(
            f"checkpoint.output_dir '{output_dir}' already holds the finished model of another run ({held}) and no "
            "checkpoint to continue it from: a new run would replace it. Start afresh with --overwrite_output_dir "
            "(replaces it at the end of the run), or choose another --output_dir")


def check_final_dir(final: Path) -> None:
    """``final/`` will be replaced by the export: refuse now, not after training, if aft_hf did not write it."""
    from .model import _earlier_export
    from .outputs import check_output_dir as check_replaceable

    if final.is_dir() and not _earlier_export(final):
        check_replaceable(final, overwrite=True, option="the export folder <output_dir>/final")


def preflight(cfg, accelerator: Accelerator) -> None:
    """Everything the end of the run needs, checked before the first step (on every rank)."""
    output_dir = Path(cfg.checkpoint.output_dir)
    check_writable(output_dir, accelerator.process_index)
    refuse_results_folder(output_dir)
    refuse_other_runs(output_dir, cfg.checkpoint.resume_from_checkpoint, cfg.checkpoint.overwrite_output_dir)
    check_final_dir(output_dir / "final")
    if cfg.hub.push_to_hub:  # fail now (on every rank, so none waits for the others), not after training
        from .hub import HubError, require_token

        if hub_offline():
            raise HubError("hub.push_to_hub is on but HF_HUB_OFFLINE is set, so the upload at the end would fail: "
                           "unset HF_HUB_OFFLINE, or train without --hub.push_to_hub and run `aft-hf push` later")
        require_token(None)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)
        if cfg.checkpoint.overwrite_output_dir and cfg.checkpoint.resume_from_checkpoint is None:
            import shutil

            for old in list_checkpoints(output_dir):
                logger.warning("overwrite_output_dir: deleting %s", old)
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
