"""Pushes to the Hub *during* training (``hub.strategy``), in the background, never stopping the run.

    end         only the final model (pushed by :func:`aft_hf.train.train` when training ends)
    every_save  + the exported model at every checkpoint save
    checkpoint  + the latest checkpoint folder under ``last-checkpoint/`` (resume on another machine)

The names and meanings are those of the transformers Trainer's ``hub_strategy``. At a save the
main process exports the model (it needs the weights of that step) into a staging folder, hard-links
a snapshot of the checkpoint next to it (checkpoints are replaced, never edited, so the snapshot
stays intact while training prunes old ones), and hands the upload to ``huggingface_hub``'s
background thread (``HfApi.run_as_future``: one worker, so uploads land in order). A failed upload
is retried; if it still fails it is logged and training goes on. :meth:`HubSync.finish` waits for
the pending uploads, so the final push is never overwritten by an older one; once uploads fail, at
most ``hub.upload_timeout_s`` (and not past a SIGTERM/SIGINT): what is still pending then is listed with
the command that uploads the final model, and ``.hub_staging/`` is removed. Local paths in the
uploaded ``aft_config.yaml`` become ``local:<name>`` (:mod:`aft_hf.published`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Callable, Optional

from huggingface_hub import HfApi

from .config import TrainConfig
from .constants import CONFIG_FILE
from .hub import HubError, retry_command
from .model import ImageEncoder, export_pretrained
from .published import rewrite_for_upload

logger = logging.getLogger(__name__)
RETRY_DELAYS_S = (10.0, 60.0)
"""Waits before the 2nd and 3rd attempt of a failed upload."""
CHECKPOINT_DIR_IN_REPO = "last-checkpoint"
STAGING_DIR = ".hub_staging"


def _snapshot(src: Path, dest: Path) -> None:
    """Hard-link copy of a folder (a real copy where links are impossible, e.g. across filesystems)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link)
    rewrite_for_upload(dest)  # aft_config.yaml without local paths (replaced files: the checkpoint is untouched)


class UploadsInterrupted(HubError):
    """SIGTERM/SIGINT arrived while :meth:`HubSync.finish` waited: staging removed, the pending uploads listed;
    the exit code is the shell's for the signal (143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _describe(record: dict) -> str:
    """``checkpoint of step 4 (pending)`` / ``model of step 2 (failed: ...)`` for a record that is not ok."""
    if record.get("abandoned"):
        return f"{record['what']} (pending)"
    return f"{record['what']} of step {record['step']} (failed: {record['error']})"


class HubSync:
    """Background uploads for ``hub.strategy`` every_save / checkpoint (main process only)."""

    def __init__(self, cfg: TrainConfig, output_dir: Path):
        self.cfg = cfg
        self.repo_id, self.private = cfg.hub.hub_model_id, cfg.hub.private
        self.strategy = cfg.hub.strategy
        self.timeout_s = float(cfg.hub.upload_timeout_s)
        self.staging_root = Path(output_dir) / STAGING_DIR
        self.api = HfApi()
        self.pending: list[tuple[Future, str]] = []
        """Each queued upload and what it carries (``model and checkpoint of step 4``)."""
        self.failing_since: Optional[float] = None
        """When the current streak of failed attempts began (None: the last attempt succeeded)."""
        self.stop = threading.Event()
        """Set when ``finish`` gives up (time out or signal): retries end and queued uploads are skipped."""
        self.results: list[dict] = []
        """One record per upload: what, step, ok, attempts (and the error when it failed)."""

    @classmethod
    def from_config(cls, cfg: TrainConfig, output_dir: Path, is_main_process: bool) -> Optional["HubSync"]:
        """None unless pushing with strategy every_save/checkpoint, on the main process."""
        if not (cfg.hub.push_to_hub and cfg.hub.strategy != "end" and is_main_process):
            return None
        return cls(cfg, output_dir)

    def on_save(self, encoder: ImageEncoder, checkpoint: Path, step: int) -> None:
        """Export this step's model (and snapshot the checkpoint) now; upload in the background."""
        staging = self.staging_root / f"step_{step:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            export_pretrained(encoder, staging / "model", extra_files={CONFIG_FILE: self.cfg.to_yaml()})
            if self.strategy == "checkpoint":
                _snapshot(checkpoint, staging / "checkpoint")
        except Exception as e:  # e.g. a full disk: this push is lost, the run (and its checkpoint) is not
            shutil.rmtree(staging, ignore_errors=True)
            self.results.append({"what": "model", "step": step, "ok": False, "attempts": 0, "error": str(e)})
            logger.warning("could not prepare the push of step %d (training goes on): %s", step, e)
            return
        what = f"model{' and checkpoint' if self.strategy == 'checkpoint' else ''} of step {step}"
        self.pending.append((self.api.run_as_future(self._upload_step, staging, step, True), what))

    def finish(self, checkpoint: Optional[Path], step: int, final: Optional[Path] = None) -> list[dict]:
        """Queue the last checkpoint (strategy checkpoint), then wait for the pending uploads.

        Uploads that go through are waited for (a large checkpoint takes its time); once the Hub fails
        (no network), the wait lasts at most ``hub.upload_timeout_s`` more, and a SIGTERM/SIGINT ends it
        at once. What is still pending then is abandoned and listed, with the command that uploads
        ``final``; ``.hub_staging/`` is removed in every case. Raises :class:`UploadsInterrupted` after a
        signal."""
        from .guards import StopOnSignal

        if self.strategy == "checkpoint" and checkpoint is not None:
            staging = self.staging_root / f"step_{step:08d}_final"
            shutil.rmtree(staging, ignore_errors=True)
            _snapshot(checkpoint, staging / "checkpoint")
            self.pending.append((self.api.run_as_future(self._upload_step, staging, step, False),
                                 f"checkpoint of step {step}"))
        waiting = [what for future, what in self.pending if not future.done()]
        if waiting:
            logger.info("waiting for %d pending Hub upload(s): %s (while uploads fail, at most %gs: "
                        "hub.upload_timeout_s)", len(waiting), "; ".join(waiting), self.timeout_s)
        start = time.monotonic()

        def hub_failing_too_long() -> bool:
            since = self.failing_since
            return since is not None and time.monotonic() - max(since, start) >= self.timeout_s

        with StopOnSignal("abandoning the pending Hub uploads and cleaning up", self.stop) as signals:
            self._wait(hub_failing_too_long)
            if not all(future.done() for future, _ in self.pending):
                self.stop.set()  # the running upload makes no further attempt; queued ones are skipped
                for future, _ in self.pending:
                    future.cancel()
                grace = time.monotonic() + 5.0
                self._wait(lambda: time.monotonic() >= grace, until_stop=False)  # a running attempt ends first
            shutil.rmtree(self.staging_root, ignore_errors=True)
        # never started (cancelled, or skipped once stopped) or still running: not uploaded
        abandoned = [what for future, what in self.pending
                     if not future.done() or future.cancelled() or future.result() is False]
        self.pending.clear()
        for what in abandoned:
            self.results.append({"what": what, "step": step, "ok": False, "attempts": 0, "abandoned": True,
                                 "error": "abandoned when training ended"})
        not_done = [_describe(r) for r in self.results if not r["ok"]]
        if not_done or signals.signum is not None:
            why = (f"received {signal.Signals(signals.signum).name} while waiting" if signals.signum is not None
                   else f"the Hub kept failing for hub.upload_timeout_s={self.timeout_s:g}s" if abandoned
                   else "uploads failed")
            message = (f"Hub uploads to '{self.repo_id}' not done ({why}): {'; '.join(not_done) or 'none'}; "
                       f"the run's files are complete on disk: upload the final model with "
                       f"`{retry_command(final, self.repo_id, self.private)}`")
            if signals.signum is not None:
                raise UploadsInterrupted(message, signals.signum)
            logger.warning("%s", message)
        return self.results

    def _wait(self, give_up: Callable[[], bool], until_stop: bool = True) -> None:
        """Wait for the pending uploads until ``give_up()`` (or ``self.stop``, with ``until_stop``), in short
        slices so a signal handler (main thread) runs promptly."""
        for future, _ in self.pending:
            while not future.done():
                if give_up() or (until_stop and self.stop.is_set()):
                    return
                try:
                    future.result(timeout=0.2)
                except FuturesTimeout:
                    continue
                except CancelledError:
                    break

    # ----------------------------------------------------------------- in the background thread

    def _upload_step(self, staging: Path, step: int, with_model: bool) -> bool:
        """Upload one save (never raises); False when skipped because ``finish`` gave up before it started."""
        try:
            if self.stop.is_set():
                return False
            if with_model:
                self._retry("model", step, lambda: self._push_model(staging / "model", step))
            if (staging / "checkpoint").is_dir() and not self._retry(
                    CHECKPOINT_DIR_IN_REPO, step, lambda: self._push_checkpoint(staging / "checkpoint", step)):
                self.results.append({"what": f"{CHECKPOINT_DIR_IN_REPO} of step {step}", "step": step, "ok": False,
                                     "attempts": 0, "abandoned": True, "error": "abandoned when training ended"})
            return True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _push_model(self, folder: Path, step: int) -> None:
        from .hub import prepare_hub_folder, push_folder

        built = prepare_hub_folder(folder, folder.with_name("hub"), self.repo_id, overwrite=True, allow_network=True)
        push_folder(built, self.repo_id, private=self.private, name=f"the model of step {step}",
                    commit_message=f"Training in progress, step {step} (aft_hf)")

    def _push_checkpoint(self, folder: Path, step: int) -> None:
        from .hub import require_token

        token = require_token(None)
        try:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model", token=token)
            self.api.upload_folder(repo_id=self.repo_id, folder_path=str(folder), path_in_repo=CHECKPOINT_DIR_IN_REPO,
                                   delete_patterns="*",  # files of an older checkpoint that this one lacks
                                   commit_message=f"Checkpoint at step {step} (aft_hf)", repo_type="model",
                                   token=token)
        except Exception as e:  # the message may echo request details: never the token
            raise RuntimeError(f"{type(e).__name__}: {e}".replace(token, "***")) from None

    def _retry(self, what: str, step: int, upload: Callable[[], None]) -> bool:
        """Run ``upload`` up to 1 + len(RETRY_DELAYS_S) times (fewer once ``stop`` is set); record the
        outcome; never raise. False: not attempted, ``stop`` was already set."""
        if self.stop.is_set():
            return False
        for attempt in range(1, len(RETRY_DELAYS_S) + 2):
            try:
                upload()
                self.failing_since = None
                self.results.append({"what": what, "step": step, "ok": True, "attempts": attempt})
                logger.info("pushed %s of step %d to %s", what, step, self.repo_id)
                return True
            except Exception as e:  # any failure: retry, then give up on this upload only
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                last = attempt > len(RETRY_DELAYS_S)
                if not last:
                    logger.warning("push of %s (step %d) failed, retrying in %gs: %s", what, step,
                                   RETRY_DELAYS_S[attempt - 1], e)
                if last or self.stop.wait(RETRY_DELAYS_S[attempt - 1]):  # the wait ends early on stop
                    self.results.append({"what": what, "step": step, "ok": False, "attempts": attempt,
                                         "error": str(e)})
                    logger.warning("could not push %s of step %d to %s after %d attempts (training goes on): %s",
                                   what, step, self.repo_id, attempt, e)
                    return True
        return True
