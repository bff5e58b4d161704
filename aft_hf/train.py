"""The AFT training loop: one readable ``accelerate`` loop from one CPU process to many GPUs.

    args -> accelerator -> model + frozen copy -> data -> prepare -> [attack -> update]* -> export

Each step: targets from the frozen encoder f_theta0 on clean images; PGD on the *unwrapped*
trainable encoder (eval mode, no parameter gradients, so attack passes trigger no DDP
all-reduce); one training forward/backward on the adversarial images; AdamW with warm-up
+ cosine from ``transformers``. Checkpoints are ``accelerator.save_state`` folders.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from .attack import PGDAttacker, UniformNoise, embedding_distance
from .config import ConfigError, TrainConfig
from .data import build_dataloader
from .launch import apply_launch, check_training_environment, run_info
from .model import ImageEncoder, export_pretrained, load_image_encoder

logger = get_logger(__name__)
PROGRESS_FILE = "progress.json"


@dataclass
class Progress:
    """Where the run is; written into every checkpoint so a resume restarts at the same sample."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    """Micro-batches this process has consumed in the current epoch."""
    skipped_images: int = 0


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: os.PathLike) -> list[Path]:
    """Complete checkpoints (holding ``progress.json``), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / PROGRESS_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def resolve_checkpoint(spec: Optional[str], output_dir: os.PathLike) -> Optional[Path]:
    """``latest`` -> the newest complete checkpoint (None if there is none); a path -> that path."""
    if spec is None:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / PROGRESS_FILE).is_file():
        raise ConfigError([f"checkpoint.resume_from_checkpoint: '{spec}' is not a complete aft_hf checkpoint "
                           f"(no {PROGRESS_FILE}); use 'latest' or a folder under <output_dir>/checkpoints"])
    return path


def save_checkpoint(accelerator: Accelerator, progress: Progress, output_dir: Path, total_limit: Optional[int]) -> Path:
    """``save_state`` into a temporary folder, then rename it into place and prune old ones.

    Written by hand rather than with accelerate's automatic checkpoint naming, because that
    names checkpoints by save count (not step) and writes in place: a crash mid-save would
    leave a half-written folder looking like the latest checkpoint.
    """
    root = output_dir / "checkpoints"
    final = root / f"step_{progress.step:08d}"
    tmp = root / f".tmp_step_{progress.step:08d}"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS_FILE).write_text(json.dumps(asdict(progress), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint saved: %s", final, main_process_only=True)
    return final


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
    attacker = PGDAttacker.from_config(cfg.attack, patch_size=encoder.patch_size,
                                       freeze_params=cfg.perf.freeze_params_in_attack)
    return UniformNoise(attacker) if cfg.attack.mode == "noise" else attacker


def attack_generator(seed: int, step: int, micro_batch: int, accelerator: Accelerator) -> torch.Generator:
    """RNG for one micro-batch's attack, keyed by its global index, not by process-local state.

    Index = (step x accumulation + micro-batch) x processes + rank, so 2 processes x 1 micro-batch
    and 1 process x 2 accumulated micro-batches draw the same numbers for the same images: a run's
    randomness does not depend on how it is laid out over devices, and a resume needs no RNG state.
    """
    index = (step * accelerator.gradient_accumulation_steps + micro_batch) * accelerator.num_processes \
        + accelerator.process_index
    return torch.Generator(device=accelerator.device).manual_seed((seed << 32) + index)


def build_optimizer(cfg: TrainConfig, encoder: ImageEncoder, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the encoder; the fused kernel on CUDA unless ``perf.fused_adamw`` says otherwise."""
    fused = cfg.perf.fused_adamw if cfg.perf.fused_adamw is not None else device.type == "cuda"
    return torch.optim.AdamW(encoder.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay, fused=fused or None)


def apply_perf_options(cfg: TrainConfig, encoder: ImageEncoder) -> None:
    """Gradient checkpointing and ``torch.compile`` of the vision tower, when asked for."""
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One AFT micro-batch: frozen targets -> attack -> training forward/backward -> optimiser step.

    The exact step :func:`train` runs (and ``benchmarks/aft_step.py`` times). ``model`` is the
    prepared (possibly DDP-wrapped) encoder, ``unwrapped`` the same module unwrapped (the attack
    runs on it so its passes trigger no all-reduce). Returns the mean loss (a detached device
    tensor: no host sync) and the targets. ``timings``, when given, receives the seconds spent in
    ``target`` / ``attack`` / ``update``; filling it synchronises the device between phases, so
    the training loop leaves it ``None``.
    """
    clock = time.perf_counter
    if timings is not None:
        _sync(images.device)
        t0 = clock()
    with accelerator.accumulate(model):
        with torch.no_grad(), accelerator.autocast():
            targets = frozen(images)
        if timings is not None:
            _sync(images.device)
            t1 = clock()
        with accelerator.autocast():
            adversarial = attacker(unwrapped, images, lambda e: embedding_distance(e, targets), generator)
            if timings is not None:
                _sync(images.device)
                t2 = clock()
            loss = embedding_distance(model(adversarial), targets).mean()
        accelerator.backward(loss)
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


def train(cfg: TrainConfig) -> Path:
    """Run AFT as configured; returns the exported folder ``<output_dir>/final``."""
    check_training_environment(cfg)  # missing tracker, fp16 on CPU, FSDP/DeepSpeed: refused before anything loads
    output_dir = Path(cfg.checkpoint.output_dir)
    cpu = cfg.cpu if cfg.cpu is not None else not torch.cuda.is_available()
    report_to = None if cfg.logging.report_to == "none" else cfg.logging.report_to
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.optim.mixed_precision,
        gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # data_seed: without it every rank shuffles with its own device-specific seed (overlapping shards)
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    apply_launch(cfg, accelerator)  # records the effective precision and global batch in cfg
    batch_size = per_device_batch_size(cfg, accelerator.num_processes)
    if cfg.hub.push_to_hub:  # fail now (on every rank, so none waits for the others), not after training
        from .hub import require_token

        require_token(None)
    resume_path = resolve_checkpoint(cfg.checkpoint.resume_from_checkpoint, output_dir)
    progress = Progress()
    if resume_path is not None:
        progress = Progress(**json.loads((resume_path / PROGRESS_FILE).read_text()))
    elif cfg.checkpoint.resume_from_checkpoint == "latest":
        logger.info("no checkpoint under %s yet: starting from scratch", output_dir, main_process_only=True)
    set_seed(cfg.seed, device_specific=True)

    # model, its frozen copy (the targets) and the attacker
    encoder = load_image_encoder(cfg.model.name_or_path, cfg.model.revision, cfg.model.output_normalize,
                                 cfg.model.attn_implementation)
    frozen = encoder.frozen_copy().to(accelerator.device)
    apply_perf_options(cfg, encoder)
    attacker = build_attacker(cfg, encoder)
    encoder.to(accelerator.device)
    optimizer = build_optimizer(cfg, encoder, accelerator.device)
    # accelerate steps a prepared scheduler once per process per optimiser step (no_trainer convention)
    scheduler = get_scheduler(cfg.optim.scheduler, optimizer,
                              num_warmup_steps=cfg.optim.warmup_steps * accelerator.num_processes,
                              num_training_steps=cfg.optim.max_steps * accelerator.num_processes)

    # data
    streaming = cfg.data.streaming

    def make_loader(skip_batches: int):
        loader = build_dataloader(cfg.data, encoder.image_size, batch_size, cfg.seed, accelerator.process_index,
                                  accelerator.num_processes, skip_examples=skip_batches * batch_size if streaming else 0)
        return loader if streaming else accelerator.prepare(loader)

    dataloader = make_loader(progress.batches_in_epoch)
    model, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        logger.info("resumed from %s at step %d", resume_path, progress.step, main_process_only=True)
    unwrapped: ImageEncoder = accelerator.unwrap_model(model)

    if report_to:
        accelerator.init_trackers(cfg.logging.project_name, config=_tracker_config(cfg))
    logger.info("AFT: %d steps x %d images (%d per process x %d processes x %d accumulation), attack %s",
                cfg.optim.max_steps, cfg.optim.batch_size, batch_size, accelerator.num_processes,
                cfg.optim.gradient_accumulation_steps, attacker, main_process_only=True)

    bar = tqdm(total=cfg.optim.max_steps, initial=progress.step, desc="AFT", unit="step",
               disable=not accelerator.is_local_main_process)
    window_loss = torch.zeros((), device=accelerator.device)
    window_batches, window_start = 0, time.perf_counter()
    images_seen, history, micro_batch = 0, [], 0
    skipped_window = torch.zeros((), dtype=torch.long, device=accelerator.device)

    def flush_skipped() -> None:  # reading the count syncs with the device: only at log/save steps
        progress.skipped_images += int(skipped_window)
        skipped_window.zero_()

    model.train()
    while progress.step < cfg.optim.max_steps:
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(progress.epoch)
        elif streaming:
            dataloader.dataset.set_epoch(progress.epoch)
        batches = dataloader
        if progress.batches_in_epoch and not streaming:
            batches = accelerator.skip_first_batches(dataloader, progress.batches_in_epoch)
        for batch in batches:
            images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            generator = attack_generator(cfg.seed, progress.step, micro_batch, accelerator)
            loss, targets = aft_step(accelerator, model, unwrapped, frozen, attacker, optimizer, scheduler,
                                     images, generator, cfg.optim.max_grad_norm)
            progress.batches_in_epoch += 1
            micro_batch = 0 if accelerator.sync_gradients else micro_batch + 1
            skipped_window += batch["skipped"]
            images_seen += images.shape[0]
            window_loss += loss.detach()
            window_batches += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            if progress.step % cfg.logging.log_every == 0 or progress.step == cfg.optim.max_steps:
                flush_skipped()
                history.append(_log_window(accelerator, unwrapped, attacker, images, targets, window_loss / window_batches,
                            window_batches * batch_size * accelerator.num_processes / (time.perf_counter() - window_start),
                            scheduler.get_last_lr()[0], progress, bar))
                window_loss.zero_()
                window_batches, window_start = 0, time.perf_counter()
            if progress.step % cfg.checkpoint.checkpointing_steps == 0 and progress.step < cfg.optim.max_steps:
                flush_skipped()
                save_checkpoint(accelerator, progress, output_dir, cfg.checkpoint.checkpoints_total_limit)
            if progress.step >= cfg.optim.max_steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
            if streaming:
                dataloader = make_loader(0)
    bar.close()
    flush_skipped()
    save_checkpoint(accelerator, progress, output_dir, cfg.checkpoint.checkpoints_total_limit)
    final = output_dir / "final"
    per_rank = accelerator.gather(torch.tensor([images_seen], device=accelerator.device)).tolist()
    skipped = accelerator.gather(torch.tensor([progress.skipped_images], device=accelerator.device)).sum().item()
    if accelerator.is_main_process:
        export_pretrained(unwrapped, final, extra_files={"aft_config.yaml": cfg.to_yaml()})
        summary = {"steps": progress.step, "num_processes": accelerator.num_processes,
                   "images_seen_per_process": per_rank, "skipped_images": skipped,
                   "distributed_type": str(accelerator.distributed_type), "final": str(final),
                   **run_info(cfg, accelerator), "log_history": history}
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("exported %s (skipped %d unreadable images in total)", final, skipped)
    accelerator.wait_for_everyone()
    if cfg.hub.push_to_hub and accelerator.is_main_process:
        from .hub import push_model

        push_model(final, cfg.hub.hub_model_id, private=cfg.hub.private)  # same folder + card as `aft-hf push`
    accelerator.end_training()
    return final


def _log_window(accelerator, unwrapped, attacker, images, targets, mean_loss, images_per_s, lr, progress, bar) -> dict:
    """Log-step metrics (returned too): the only place the loop syncs with the host."""
    with torch.no_grad(), accelerator.autocast():
        clean = embedding_distance(unwrapped(images), targets).mean()
    skipped = accelerator.reduce(torch.tensor(float(progress.skipped_images), device=accelerator.device), "sum")
    metrics = {
        "train/loss": accelerator.reduce(mean_loss, "mean").item(),
        "train/clean_distance": accelerator.reduce(clean.detach(), "mean").item(),
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
    bar.set_postfix(loss=f"{metrics['train/loss']:.4g}", clean=f"{metrics['train/clean_distance']:.3g}",
                    lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
    return {"step": progress.step, **metrics}


# --------------------------------------------------------------------------- CLI


def add_subcommand(subparsers) -> None:
    """``aft-hf train --config FILE [--section.field value ...]``."""
    p = subparsers.add_parser(
        "train", help="fine-tune a CLIP image encoder with AFT",
        description="Fine-tune with AFT. Any config field can be overridden: --section.field value "
                    "(or a unique field name alone, e.g. --lr 2e-5 or --resume_from_checkpoint latest).")
    p.add_argument("--config", help="YAML file, or a shipped recipe by name (e.g. tiny_offline; "
                                    "see --list-configs); defaults fill missing fields")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-configs", action="store_true", help="list the shipped recipes and exit")
    p.set_defaults(func=_cli_train, accepts_overrides=True)
    from .config_help import describe_config_cli

    describe_config_cli(p)


def _cli_train(args, overrides: list[str]) -> int:
    from .config import load_config
    from .recipes import format_recipes

    if args.list_configs:
        print(f"shipped recipes (use as --config NAME):\n{format_recipes()}")
        return 0
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    print(f"exported: {train(cfg)}")
    return 0
