"""The AFT training loop: one readable ``accelerate`` loop from one CPU process to many GPUs.

    args -> accelerator -> model + frozen copy -> data -> prepare -> [attack -> update]* -> export

Each step: targets from the frozen encoder f_theta0 on clean images; PGD on the *unwrapped*
trainable encoder (eval mode, no parameter gradients, so attack passes trigger no DDP
all-reduce); one training forward/backward on the adversarial images; AdamW with warm-up
+ cosine from ``transformers``. Checkpoints are ``accelerator.save_state`` folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler

from . import perf
from .attack import PGDAttacker, UniformNoise, embedding_distance  # noqa: F401 (re-exported)
from .card import hub_id_of
from .checkpointing import (  # noqa: F401
    EVAL_HISTORY_FILE,
    HISTORY_FILE,
    PROGRESS_FILE,
    CheckpointError,
    Progress,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig, unread_fields
from .constants import CONFIG_CHANGES_FILE, CONFIG_FILE, SUMMARY_FILE
from .data import build_dataloader, check_source, epoch_position, image_geometry, resume_position, stream_positions, watch_stalls
from .errors import AftError
from .files import write_json
from .guards import NonFiniteGuard, StopOnSignal, TrainingStopped, preflight, require_finite_weights
from .hub_sync import HubSync
from .launch import accelerator_precision, apply_launch, check_training_environment, run_info
from .lora import apply_lora, save_adapter, trainable_parameters
from .model import ImageEncoder, export_pretrained, load_image_encoder, load_model_config
from .objective_setup import build_objective
from .objectives import EmbeddingObjective, Objective
from .resume import apply_optim_config, check_resume_config
from .train_eval import build_evaluator

logger = get_logger(__name__)


# --------------------------------------------------------------------------- helpers


def _tracker_config(cfg: TrainConfig) -> dict:
    """Flat scalar config for trackers (tensorboard hparams accept only scalars)."""
    flat = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for k, v in values.items():
                flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
        else:
            flat[section] = values if isinstance(values, (int, float, str, bool)) else str(values)
    return flat


def per_device_batch_size(cfg: TrainConfig, num_processes: int) -> int:
    """Global batch / (processes x accumulation steps); the split must be exact."""
    split = num_processes * cfg.optim.gradient_accumulation_steps
    if cfg.optim.batch_size % split:
        raise ConfigError([f"optim.batch_size ({cfg.optim.batch_size}) must be divisible by processes x "
                           f"gradient_accumulation_steps ({num_processes} x {cfg.optim.gradient_accumulation_steps})"])
    return cfg.optim.batch_size // split


def build_attacker(cfg: TrainConfig, encoder: ImageEncoder):
    """The inner attack of ``attack.mode``: PGD, or the noise control (the same threat model's random sample)."""
    if cfg.attack.mode == "noise":
        return UniformNoise.from_config(cfg.attack, patch_size=encoder.patch_size)
    return PGDAttacker.from_config(cfg.attack, patch_size=encoder.patch_size,
                                   freeze_params=cfg.perf.freeze_params_in_attack)


def attack_generator(seed: int, step: int, micro_batch: int, accelerator: Accelerator) -> torch.Generator:
    """RNG for one micro-batch's attack, keyed by its global index, not by process-local state.

    Index = (step x accumulation + micro-batch) x processes + rank, so 2 processes x 1 micro-batch
    and 1 process x 2 accumulated micro-batches draw the same numbers for the same images: a run's
    randomness does not depend on how it is laid out over devices, and a resume needs no RNG state.
    """
    index = (step * accelerator.gradient_accumulation_steps + micro_batch) * accelerator.num_processes \
        + accelerator.process_index
    return torch.Generator(device=accelerator.device).manual_seed((seed << 32) + index)


FUSED_ADAMW_DEVICES = ("cuda", "cpu")
"""Device types on which AdamW uses torch's fused kernel by default."""


def build_optimizer(cfg: TrainConfig, encoder: ImageEncoder, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the encoder's trainable weights (the adapters under LoRA); the fused kernel on CUDA and CPU
    (1.05x per ViT-B/32 step on CPU, docs/performance.md) unless ``perf.fused_adamw`` says otherwise."""
    fused = cfg.perf.fused_adamw if cfg.perf.fused_adamw is not None else device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(trainable_parameters(encoder), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay, fused=fused or None)


def apply_perf_options(cfg: TrainConfig, encoder: ImageEncoder) -> None:
    """Matmul patch embedding, gradient checkpointing and ``torch.compile`` of the vision tower, when asked for."""
    if cfg.perf.patch_embedding_matmul:
        perf.use_matmul_patch_embedding(encoder.vision)
    if cfg.perf.gradient_checkpointing:  # renamed in recent transformers; the old name warns
        enable = getattr(encoder.vision, "activation_checkpointing_enable", None) or \
            encoder.vision.gradient_checkpointing_enable
        enable()
    if cfg.perf.compile:
        encoder.vision.compile()


# --------------------------------------------------------------------------- the loop


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grad_norm(accelerator: Accelerator, model: torch.nn.Module, max_grad_norm: Optional[float]):
    """Clip when asked and return the total gradient norm (a device tensor); None under fp16 without
    clipping, where the grad scaler checks the gradients itself."""
    if max_grad_norm:
        return accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    if getattr(accelerator, "scaler", None) is not None:
        return None
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


def aft_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    unwrapped: ImageEncoder,
    frozen: ImageEncoder,
    attacker,
    optimizer: torch.optim.Optimizer,
    scheduler,
    images: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    max_grad_norm: Optional[float] = None,
    timings: Optional[dict] = None,
    guard: Optional[NonFiniteGuard] = None,
    objective: Optional[Objective] = None,
    labels: Optional[torch.Tensor] = None,
    class_token_last_layer: bool = True,
) -> tuple[torch.Tensor, object]:
    """One AFT micro-batch: frozen targets -> attack -> training forward/backward -> optimiser step.

    The exact step :func:`train` runs (and ``benchmarks/aft_step.py`` times). ``model`` is the
    prepared (possibly DDP-wrapped) encoder, ``unwrapped`` the same module unwrapped (the attack
    runs on it so its passes trigger no all-reduce). Returns the mean loss (a detached device
    tensor: no host sync) and the targets. ``timings``, when given, receives the seconds spent in
    ``target`` / ``attack`` / ``update``; filling it synchronises the device between phases, so
    the training loop leaves it ``None``. ``guard``, when given, skips (and counts) an update whose
    loss or gradient norm is not finite. ``objective`` (default: the embedding objective against
    ``frozen``) gives the targets and the per-sample loss that the attack maximises and the update
    minimises; ``labels`` are the batch's class indices when it needs them (:mod:`aft_hf.objectives`).
    ``class_token_last_layer`` (``perf.class_token_last_layer``): for the step's duration the last layer of the
    encoders computes the pooled class token alone (:func:`aft_hf.perf.class_token_last_layer`; same embedding).
    """
    objective = objective if objective is not None else EmbeddingObjective(frozen)
    levers = perf.class_token_last_layer(unwrapped, frozen) if class_token_last_layer else contextlib.nullcontext()
    with levers:
        clock = time.perf_counter
        if timings is not None:
            _sync(images.device)
            t0 = clock()
        with accelerator.accumulate(model):
            with torch.no_grad(), accelerator.autocast():
                targets = objective.targets(images, labels)
            if timings is not None:
                _sync(images.device)
                t1 = clock()
            with accelerator.autocast():
                adversarial = attacker(unwrapped, images, lambda e: objective.loss(e, targets), generator)
                if timings is not None:
                    _sync(images.device)
                    t2 = clock()
                loss = objective.loss(model(adversarial), targets).mean()
            accelerator.backward(loss)
            if guard is not None and accelerator.sync_gradients:
                guard.step(accelerator, optimizer, loss, _grad_norm(accelerator, model, max_grad_norm))
            else:
                if accelerator.sync_gradients and max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if timings is not None:
            _sync(images.device)
            t3 = clock()
            timings.update(target=t1 - t0, attack=t2 - t1, update=t3 - t2)
        return loss.detach(), targets


def build_accelerator(cfg: TrainConfig, output_dir: Path) -> Accelerator:
    cpu = cfg.cpu if cfg.cpu is not None else not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=accelerator_precision(cfg),
        # no sync at the end of an epoch: a short last accumulation carries over into the next epoch,
        # so every optimiser step sees exactly optim.batch_size images
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.optim.gradient_accumulation_steps, sync_with_dataloader=False),
        log_with=None if cfg.logging.report_to == "none" else cfg.logging.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # the training data's order is aft_hf.data.EpochSampler (seed + epoch); data_seed keeps any plain
        # RandomSampler from shuffling with a device-specific seed on each rank (overlapping shards)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )


def find_resume_point(cfg: TrainConfig, output_dir: Path) -> tuple[Optional[Path], Progress]:
    """The checkpoint to resume from (validated, config compared) and its progress."""
    found = resolve_checkpoint(cfg.checkpoint.resume_from_checkpoint, output_dir)
    if found is None:
        if cfg.checkpoint.resume_from_checkpoint == "latest":  # a warning: a mistyped output_dir also lands here
            logger.warning("no checkpoint under %s yet: starting from scratch (resume_from_checkpoint latest)",
                           output_dir, main_process_only=True)
        return None, Progress()
    path, progress = found
    if progress.step > cfg.optim.max_steps:  # it would train nothing and export the checkpoint as a shorter run
        raise ConfigError([f"{path} is at step {progress.step}, past max_steps {cfg.optim.max_steps}: resume with "
                           f"--max_steps {progress.step} or more, or start a new run in another output_dir"])
    changes = check_resume_config(path, cfg, progress.working_dir)
    if changes:
        logger.warning("resuming with changed settings: %s", "; ".join(changes),
                       main_process_only=True)
        progress.config_changes.append({"step": progress.step, "changes": changes})
    return path, progress


def build_models(cfg: TrainConfig, accelerator: Accelerator):
    """The trainable encoder, its frozen copy (the targets), the attacker, AdamW and its schedule."""
    encoder = load_image_encoder(cfg.model.name_or_path, cfg.model.revision, cfg.model.output_normalize,
                                 cfg.model.attn_implementation, embedding=cfg.model.embedding,
                                 image_size=cfg.model.image_size, feature_layer=cfg.model.feature_layer)
    frozen = encoder.frozen_copy().to(accelerator.device)
    if cfg.lora.r > 0:
        trainable = apply_lora(encoder.vision, cfg.lora)
        logger.info("LoRA r=%d on %s: %d trainable weights of %d", cfg.lora.r, ",".join(cfg.lora.target_modules),
                    trainable, sum(p.numel() for p in encoder.parameters()), main_process_only=True)
    apply_perf_options(cfg, encoder)
    attacker = build_attacker(cfg, encoder)
    encoder.to(accelerator.device)
    optimizer = build_optimizer(cfg, encoder, accelerator.device)
    # accelerate steps a prepared scheduler once per process per optimiser step (no_trainer convention)
    scheduler = get_scheduler(cfg.optim.scheduler, optimizer,
                              num_warmup_steps=cfg.optim.warmup_steps * accelerator.num_processes,
                              num_training_steps=cfg.optim.max_steps * accelerator.num_processes)
    return encoder, frozen, attacker, optimizer, scheduler


def load_checkpoint(accelerator: Accelerator, path: Path, optimizer, scheduler, cfg: TrainConfig) -> None:
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # validated before, so this is a mismatch (other model/layout) or a damaged file
        raise CheckpointError(f"could not load checkpoint {path} ({type(e).__name__}: {str(e)[:300]}); "
                              "resume from an earlier checkpoint or start afresh with --overwrite_output_dir") from e
    apply_optim_config(optimizer, scheduler, cfg)
    logger.info("resumed from %s", path, main_process_only=True)


def train(cfg: TrainConfig) -> Path:
    """Run AFT as configured; returns the exported folder ``<output_dir>/final``.

    Raises :class:`~aft_hf.guards.TrainingStopped` after a SIGTERM/SIGINT (checkpoint saved). A run refused before
    it wrote anything (a mistyped model or data set) leaves no empty output folder behind.
    """
    output_dir = Path(cfg.checkpoint.output_dir)
    fresh_dir = not output_dir.exists()
    try:
        return _train(cfg, output_dir)
    except AftError:
        if fresh_dir:
            with contextlib.suppress(OSError):
                output_dir.rmdir()  # only if still empty
        raise


def _train(cfg: TrainConfig, output_dir: Path) -> Path:
    check_training_environment(cfg)  # missing tracker, fp16 on CPU, FSDP/DeepSpeed: refused before anything loads
    accelerator = build_accelerator(cfg, output_dir)
    final = _run_training(cfg, accelerator, output_dir)  # the model, its DDP wrapper and the loop die with its frame
    # end_training destroys the process group. A DDP wrapper still alive then would hold its last reference, and
    # destroying it from there joins gloo's worker threads with the GIL held: a worker that still needs the GIL
    # to free the last collective's tensors deadlocks both (seen ~1 run in 10 at the end of a 2-process CPU run).
    # Released first, the wrapper never holds the last reference, and torch frees the group without the GIL.
    accelerator.free_memory()  # its own references, and a gc pass for any cycle
    accelerator.end_training()
    return final


def _run_training(cfg: TrainConfig, accelerator: Accelerator, output_dir: Path) -> Path:
    """Everything from the launch checks to the pushed export; returns ``<output_dir>/final``."""
    apply_launch(cfg, accelerator)  # records the effective precision and global batch in cfg
    batch_size = per_device_batch_size(cfg, accelerator.num_processes)
    check_source(cfg.data)  # a local data folder that is not there: before any checkpoint is touched or model loaded
    preflight(cfg, accelerator)  # writable output, hub reachable + token, no foreign checkpoints
    if unread := unread_fields(cfg):
        logger.warning("settings this run does not read, so they change nothing (the model card marks them): %s",
                       ", ".join(unread), main_process_only=True)
    # the saved config first: a resume without --config names the fields that differ, not the default model
    resume_path, progress = find_resume_point(cfg, output_dir)
    load_model_config(cfg.model.name_or_path, cfg.model.revision)  # no weights: a mistyped model fails fast
    set_seed(cfg.seed, device_specific=True)

    encoder, frozen, attacker, optimizer, scheduler = build_models(cfg, accelerator)
    objective = build_objective(cfg, encoder, frozen, accelerator.device)  # once: TeCoA's class embeddings

    def make_loader(skip_records: int):  # streamed data: fast-forward by raw records read (bad ones included)
        streaming = cfg.data.streaming
        loader = build_dataloader(cfg.data, image_geometry(encoder), batch_size, cfg.seed, accelerator.process_index,
                                  accelerator.num_processes, skip_examples=skip_records if streaming else 0,
                                  **objective.loader_options(cfg.data))
        if streaming:
            return loader
        # map-style: the epoch's permutation is entered at the record the checkpoint reached, whatever
        # the batch geometry now (an accelerate skip_first_batches would count batches of the new size)
        position = epoch_position(progress.records_per_process, progress.records_in_epoch,
                                  len(progress.images_seen_per_process))
        loader.sampler.resume_at(position)
        # this process's share of the position, so the next checkpoint's sum over processes is exact
        n, rank = accelerator.num_processes, accelerator.process_index
        progress.records_in_epoch = position // n + (rank < position % n)
        return accelerator.prepare(loader)

    dataloader = make_loader(resume_position(progress.records_per_process, accelerator.process_index,
                                             accelerator.num_processes, progress.batches_in_epoch * batch_size))
    model, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    if resume_path is not None:
        load_checkpoint(accelerator, resume_path, optimizer, scheduler, cfg)
    if accelerator.log_with:
        accelerator.init_trackers(cfg.logging.project_name, config=_tracker_config(cfg))
    logger.info("AFT: %d steps x %d images (%d per process x %d processes x %d accumulation) on %s, precision %s, "
                "attack %s", cfg.optim.max_steps, cfg.optim.batch_size, batch_size, accelerator.num_processes,
                cfg.optim.gradient_accumulation_steps, accelerator.device, accelerator.mixed_precision, attacker,
                main_process_only=True)

    with logging_redirect_tqdm():  # log lines (evaluations, checkpoints) above the progress bar, not glued onto it
        loop = TrainingLoop(cfg, accelerator, model, frozen, attacker, optimizer, scheduler, progress,
                            resume_path, batch_size, make_loader, objective=objective)
        if loop.evaluator is not None and progress.step == 0:
            loop.evaluator.run(accelerator, loop.unwrapped, 0)  # the original's numbers, the baseline
        with StopOnSignal() as stop:
            loop.run(dataloader, stop)
    final = loop.finish()
    accelerator.wait_for_everyone()
    if loop.hub_sync is not None:
        loop.hub_sync.finish(loop.last_saved, progress.step, final)  # pending uploads land before the final push
    if cfg.hub.push_to_hub and accelerator.is_main_process:
        from .hub import push_model

        push_model(final, cfg.hub.hub_model_id, private=cfg.hub.private)  # same folder + card as `aft-hf push`
    return final


@dataclass
class TrainingLoop:
    """The step loop and everything it carries from step to step (and into checkpoints)."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    frozen: ImageEncoder
    attacker: object
    optimizer: object
    scheduler: object
    progress: Progress
    resume_path: Optional[Path]
    batch_size: int
    make_loader: Callable
    history: list = field(default_factory=list)
    eval_history: list = field(default_factory=list)
    """Every evaluation of the run, resumes included (carried in checkpoints as ``eval_history.json``)."""
    images_seen: int = 0
    objective: Optional[Objective] = None
    """What is minimised under attack (:mod:`aft_hf.objectives`); None: the embedding objective."""

    def __post_init__(self):
        acc = self.accelerator
        self.output_dir = Path(self.cfg.checkpoint.output_dir)
        if self.objective is None:
            self.objective = EmbeddingObjective(self.frozen)
        self.unwrapped: ImageEncoder = acc.unwrap_model(self.model)
        self.guard = NonFiniteGuard(self.cfg.optim.max_nonfinite_steps, acc.device)
        self.guard.total += self.progress.nonfinite_steps
        self.guard.reported = self.progress.nonfinite_steps
        if self.resume_path is not None and (self.resume_path / HISTORY_FILE).is_file():
            self.history = json.loads((self.resume_path / HISTORY_FILE).read_text())
        if self.resume_path is not None and (self.resume_path / EVAL_HISTORY_FILE).is_file():
            self.eval_history = json.loads((self.resume_path / EVAL_HISTORY_FILE).read_text())
        seen = self.progress.images_seen_per_process
        self.images_seen = seen[acc.process_index] if len(seen) == acc.num_processes else 0
        self.micro_batch = 0
        self.window_loss = torch.zeros((), device=acc.device)
        self.window_batches, self.window_start = 0, time.perf_counter()
        self.skipped_window = torch.zeros((), dtype=torch.long, device=acc.device)
        self.bar = tqdm(total=self.cfg.optim.max_steps, initial=self.progress.step, desc="AFT", unit="step",
                        disable=not acc.is_local_main_process)
        self.evaluator = build_evaluator(self.cfg, self.unwrapped, self.frozen)  # eval.*: None when off
        if self.evaluator is not None:
            self.evaluator.history = self.eval_history  # one list: the evaluator appends to the run's history
        self.hub_sync = HubSync.from_config(self.cfg, self.output_dir, acc.is_main_process)  # None for 'end'
        self.last_saved: Optional[Path] = None

    def run(self, dataloader, stop: StopOnSignal) -> None:
        """Epochs of micro-batches until ``optim.max_steps`` optimiser steps are done."""
        acc, progress, streaming = self.accelerator, self.progress, self.cfg.data.streaming
        self.model.train()
        while progress.step < self.cfg.optim.max_steps:
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(progress.epoch)
            elif streaming:
                dataloader.dataset.set_epoch(progress.epoch)
            for batch in watch_stalls(dataloader, self.cfg.data.stall_warning_s, dataloader):
                self.micro_step(batch)
                if acc.sync_gradients:
                    progress.step += 1
                    self.after_step(batch, stop)
                    if progress.step >= self.cfg.optim.max_steps:
                        break
            else:
                progress.epoch += 1
                progress.batches_in_epoch = progress.records_in_epoch = 0
                if streaming:
                    dataloader = self.make_loader(0)
        self.bar.close()

    def micro_step(self, batch) -> None:
        acc = self.accelerator
        self.images = batch["pixel_values"].to(acc.device, non_blocking=True)
        labels = batch["labels"].to(acc.device, non_blocking=True) if "labels" in batch else None
        generator = attack_generator(self.cfg.seed, self.progress.step, self.micro_batch, acc)
        loss, self.targets = aft_step(acc, self.model, self.unwrapped, self.frozen, self.attacker, self.optimizer,
                                      self.scheduler, self.images, generator, self.cfg.optim.max_grad_norm,
                                      guard=self.guard, objective=self.objective, labels=labels,
                                      class_token_last_layer=self.cfg.perf.class_token_last_layer)
        self.progress.batches_in_epoch += 1
        self.progress.records_in_epoch += int(batch["records"])
        self.micro_batch = 0 if acc.sync_gradients else self.micro_batch + 1
        self.skipped_window += batch["skipped"]
        self.images_seen += self.images.shape[0]
        self.window_loss += loss.detach()
        self.window_batches += 1

    def after_step(self, batch, stop: StopOnSignal) -> None:
        """Log, checkpoint, or stop on a signal, after optimiser step ``progress.step``."""
        cfg, step = self.cfg, self.progress.step
        self.bar.update(1)
        last = step == cfg.optim.max_steps
        log_now = step % cfg.logging.log_every == 0 or last
        save_now = step % cfg.checkpoint.checkpointing_steps == 0 and not last
        if log_now:
            self.log()
        if self.evaluator is not None and self.evaluator.due(step):
            self.evaluator.run(self.accelerator, self.unwrapped, step)
        saved = self.save() if save_now else None
        if saved is not None and self.hub_sync is not None:
            self.hub_sync.on_save(self.unwrapped, saved, step)
        signum = None if last else stop.requested(self.accelerator, boundary=log_now or save_now)
        if signum is not None:
            raise TrainingStopped(signum, step, saved or self.save())

    def flush_skipped(self) -> None:  # reading the count syncs with the device: only at log/save steps
        self.progress.skipped_images += int(self.skipped_window)
        self.skipped_window.zero_()

    def log(self) -> None:
        acc = self.accelerator
        self.flush_skipped()
        self.guard.check()
        elapsed = time.perf_counter() - self.window_start
        images_per_s = self.window_batches * self.batch_size * acc.num_processes / elapsed
        self.history.append(_log_window(acc, self.unwrapped, self.attacker, self.objective, self.images, self.targets,
                                        self.window_loss / self.window_batches, images_per_s,
                                        self.scheduler.get_last_lr()[0], self.progress, self.bar))
        self.window_loss.zero_()
        self.window_batches, self.window_start = 0, time.perf_counter()

    def save(self) -> Path:
        """A checkpoint of the current state, refused (with the last good one kept) if it is not finite."""
        acc = self.accelerator
        self.flush_skipped()
        # every process's position in the epoch (its stream shard, or its share of the permutation)
        self.progress.records_per_process = stream_positions(acc, self.progress.records_in_epoch)
        self.progress.nonfinite_steps = self.guard.check()
        self.progress.working_dir = os.getcwd()  # what the saved config's relative paths are relative to
        require_finite_weights(self.unwrapped, f"checkpoint at step {self.progress.step}")
        seen = acc.gather(torch.tensor([self.images_seen], device=acc.device))
        self.progress.images_seen_per_process = [int(x) for x in seen.tolist()]
        self.last_saved = save_checkpoint(acc, self.progress, self.output_dir,
                                          self.cfg.checkpoint.checkpoints_total_limit, self.history, self.cfg.to_yaml(),
                                          self.eval_history)
        return self.last_saved

    def finish(self) -> Path:
        """Last checkpoint, ``final/`` export and ``train_summary.json``."""
        acc, progress = self.accelerator, self.progress
        self.save()
        final = self.output_dir / "final"
        require_finite_weights(self.unwrapped, "final/")
        skipped = acc.gather(torch.tensor([progress.skipped_images], device=acc.device)).sum().item()
        if acc.is_main_process:
            extra = {CONFIG_FILE: self.cfg.to_yaml()}
            if progress.config_changes:  # aft_config.yaml holds the last values: the card also says what changed when
                extra[CONFIG_CHANGES_FILE] = json.dumps(progress.config_changes, indent=2)
            export_pretrained(self.unwrapped, final, extra_files=extra, revision=self.cfg.model.revision,
                              write_extra=self.write_adapter if self.cfg.lora.r > 0 and self.cfg.lora.save_adapter
                              else None)
            summary = {"steps": progress.step, "num_processes": acc.num_processes,
                       "images_seen_per_process": progress.images_seen_per_process,
                       "images_seen": sum(progress.images_seen_per_process), "skipped_images": skipped,
                       "nonfinite_steps": progress.nonfinite_steps, "config_changes": progress.config_changes,
                       "distributed_type": str(acc.distributed_type), "final": str(final),
                       **run_info(self.cfg, acc), "log_history": self.history}
            if self.evaluator is not None or self.eval_history:  # evaluations of earlier legs count too
                summary.update({"eval": self.eval_history[-1] if self.eval_history else None,
                                "eval_history": self.eval_history})
                summary.update(self.evaluator.summary() if self.evaluator is not None else {})
            write_json(self.output_dir / SUMMARY_FILE, summary)
            logger.info("exported %s (skipped %d unreadable images in total)", final, skipped)
        return final


    def write_adapter(self, folder: Path) -> None:
        """The LoRA adapter alone, in ``<folder>/adapter`` (written into the export before it is moved into place)."""
        save_adapter(self.unwrapped.vision, self.frozen.vision, self.cfg.lora, folder / "adapter",
                     base_model=hub_id_of(self.cfg.model.name_or_path))


def _log_window(accelerator, unwrapped, attacker, objective, images, targets, mean_loss, images_per_s, lr, progress,
                bar) -> dict:
    """Log-step metrics (returned too): the only place the loop syncs with the host. The objective's loss
    on the clean images is logged as its ``clean_metric`` (``train/clean_distance`` for AFT)."""
    with torch.no_grad(), accelerator.autocast():
        clean = objective.loss(unwrapped(images), targets).mean()
    skipped = accelerator.reduce(torch.tensor(float(progress.skipped_images), device=accelerator.device), "sum")
    metrics = {
        "train/loss": accelerator.reduce(mean_loss, "mean").item(),
        objective.clean_metric: accelerator.reduce(clean.detach(), "mean").item(),
        "train/lr": lr,
        "train/images_per_s": images_per_s,
        "data/skipped_images": skipped.item(),
        "train/epoch": progress.epoch,
    }
    if attacker.last_losses:  # the attack's own loss at its first and last iteration (noise control: none)
        metrics["attack/first_iter_loss"] = accelerator.reduce(attacker.last_losses[0], "mean").item()
        metrics["attack/last_iter_loss"] = accelerator.reduce(attacker.last_losses[-1], "mean").item()
    accelerator.log(metrics, step=progress.step)
    if metrics["data/skipped_images"]:
        logger.info("step %d: %d unreadable images skipped so far", progress.step,
                    int(metrics["data/skipped_images"]), main_process_only=True)
    bar.set_postfix(loss=f"{metrics['train/loss']:.4g}", clean=f"{metrics[objective.clean_metric]:.3g}",
                    lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
    return {"step": progress.step, **metrics}
