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
every pending upload, so the final push is never overwritten by an older one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

from huggingface_hub import HfApi

from .config import TrainConfig
from .model import ImageEncoder, export_pretrained

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


class HubSync:
    """Background uploads for ``hub.strategy`` every_save / checkpoint (main process only)."""

    def __init__(self, cfg: TrainConfig, output_dir: Path):
        self.cfg = cfg
        self.repo_id, self.private = cfg.hub.hub_model_id, cfg.hub.private
        self.strategy = cfg.hub.strategy
        self.staging_root = Path(output_dir) / STAGING_DIR
        self.api = HfApi()
        self.pending: list[Future] = []
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
            export_pretrained(encoder, staging / "model", extra_files={"aft_config.yaml": self.cfg.to_yaml()})
            if self.strategy == "checkpoint":
                _snapshot(checkpoint, staging / "checkpoint")
        except Exception as e:  # e.g. a full disk: this push is lost, the run (and its checkpoint) is not
            shutil.rmtree(staging, ignore_errors=True)
            self.results.append({"what": "model", "step": step, "ok": False, "attempts": 0, "error": str(e)})
            logger.warning("could not prepare the push of step %d (training goes on): %s", step, e)
            return
        self.pending.append(self.api.run_as_future(self._upload_step, staging, step, True))

    def finish(self, checkpoint: Optional[Path], step: int) -> list[dict]:
        """Queue the last checkpoint (strategy checkpoint), then wait for every pending upload."""
        if self.strategy == "checkpoint" and checkpoint is not None:
            staging = self.staging_root / f"step_{step:08d}_final"
            shutil.rmtree(staging, ignore_errors=True)
            _snapshot(checkpoint, staging / "checkpoint")
            self.pending.append(self.api.run_as_future(self._upload_step, staging, step, False))
        if self.pending:
            logger.info("waiting for %d pending Hub upload(s)", sum(not f.done() for f in self.pending))
        for future in self.pending:
            future.result()  # _upload_step never raises
        self.pending.clear()
        if self.staging_root.is_dir() and not any(self.staging_root.iterdir()):
            self.staging_root.rmdir()
        return self.results

    # ----------------------------------------------------------------- in the background thread

    def _upload_step(self, staging: Path, step: int, with_model: bool) -> None:
        try:
            if with_model:
                self._retry("model", step, lambda: self._push_model(staging / "model", step))
            if (staging / "checkpoint").is_dir():
                self._retry(CHECKPOINT_DIR_IN_REPO, step, lambda: self._push_checkpoint(staging / "checkpoint", step))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _push_model(self, folder: Path, step: int) -> None:
        from .hub import prepare_hub_folder, push_folder

        built = prepare_hub_folder(folder, folder.with_name("hub"), self.repo_id, overwrite=True, allow_network=True)
        push_folder(built, self.repo_id, private=self.private,
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

    def _retry(self, what: str, step: int, upload: Callable[[], None]) -> None:
        """Run ``upload`` up to 1 + len(RETRY_DELAYS_S) times; record the outcome; never raise."""
        for attempt in range(1, len(RETRY_DELAYS_S) + 2):
            try:
                upload()
                self.results.append({"what": what, "step": step, "ok": True, "attempts": attempt})
                logger.info("pushed %s of step %d to %s", what, step, self.repo_id)
                return
            except Exception as e:  # any failure: retry, then give up on this upload only
                if attempt > len(RETRY_DELAYS_S):
                    self.results.append({"what": what, "step": step, "ok": False, "attempts": attempt,
                                         "error": str(e)})
                    logger.warning("could not push %s of step %d to %s after %d attempts (training goes on): %s",
                                   what, step, self.repo_id, attempt, e)
                    return
                logger.warning("push of %s (step %d) failed, retrying in %gs: %s", what, step,
                               RETRY_DELAYS_S[attempt - 1], e)
                time.sleep(RETRY_DELAYS_S[attempt - 1])
