"""Contrastive pretraining of a small transformers ``CLIPModel`` in the synthetic world.

This loop does not use :func:`aft_hf.train.train`: that trainer fine-tunes an image tower against
a frozen copy of itself under attack (AFT), while this one trains both towers from scratch with a
contrastive image-text loss on images rendered per step, a different objective with different inputs.

Training images are rendered on the fly (image i of the stream is ``render_sample(rng([seed, i]))``),
so the run is reproducible from its seed and never sees a held-out image (held-out sets use other
world seeds). The loss is CLIP's symmetric InfoNCE with the captions of a batch de-duplicated:
with 16 classes a batch repeats captions, and treating repeats as negatives would punish the
right answer. Image -> text is a softmax over the distinct captions; text -> image a softmax over
the batch's images with every image of that caption counted as a positive.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..tokenizer import build_word_tokenizer
from .config import PretrainConfig, build_clip_config, text_positions
from .dataset import WorldConfig, generate_arrays, render_sample
from .zeroshot import (
    accuracies,
    class_text_embeddings,
    evaluate_zero_shot,
    image_embeddings,
    to_pixel_values,
    zero_shot_predict,
)


def easy_world(world: WorldConfig) -> WorldConfig:
    """The curriculum's easy images: same vocabulary, no distractors, plain background, upper half of the sizes."""
    lo, hi = world.target_size
    return replace(world, num_distractors=(0, 0), target_size=((lo + hi) / 2, hi), noise_std=0.0, plain_background=True)


def _render_batch(cfg: PretrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    idx0 = step * cfg.batch_size
    p_easy = max(0.0, 1.0 - step / cfg.curriculum_steps) if cfg.curriculum_steps else 0.0
    easy = easy_world(cfg.world)
    samples = []
    for j in range(cfg.batch_size):
        rng = np.random.default_rng([cfg.seed, idx0 + j])
        samples.append(render_sample(rng, easy if rng.random() < p_easy else cfg.world))
    return np.stack([s.image for s in samples]), np.array([s.label for s in samples])


def contrastive_loss(img: Tensor, text: Tensor, labels: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric CLIP loss with de-duplicated captions: ``img`` (B, D), ``text`` (K, D) class captions, ``labels`` (B,)."""
    present = torch.unique(labels)
    logits = logit_scale.exp().clamp(max=100) * img @ text[present].T  # (B, P)
    targets = torch.searchsorted(present, labels)
    loss_i2t = F.cross_entropy(logits, targets)
    pos = F.one_hot(targets, len(present)).T.float()  # (P, B): images of each caption
    log_p = F.log_softmax(logits.T, dim=-1)
    loss_t2i = -((log_p * pos).sum(-1) / pos.sum(-1)).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(model, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases, norms and embeddings."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))


def pretrain(cfg: PretrainConfig, progress: bool = True):
    """Train a ``CLIPModel`` from scratch in the world; returns (model, tokenizer, results dict)."""
    from tqdm.auto import tqdm
    from transformers import CLIPModel

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = build_word_tokenizer(cfg.world.words, model_max_length=text_positions(cfg))
    model = CLIPModel(build_clip_config(cfg, len(tokenizer)))
    model.train()
    opt = _optimizer(model, cfg)
    eval_data = generate_arrays(min(cfg.eval_images, 500), cfg.eval_seed, cfg.world) if cfg.eval_every else None
    history = []
    start, cpu_start = time.time(), time.process_time()
    bar = tqdm(range(cfg.steps), desc="pretraining world CLIP", disable=not progress)
    for step in bar:
        images, labels = _render_batch(cfg, step)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        text = class_text_embeddings(model, tokenizer, cfg.world.captions)
        img = image_embeddings(model, to_pixel_values(images))
        loss = contrastive_loss(img, text, torch.from_numpy(labels), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = accuracies(zero_shot_predict(model, tokenizer, eval_data["images"], cfg.world), eval_data["labels"],
                             cfg.world)
            history.append({"step": step + 1, "loss": loss.item(), "seconds": round(time.time() - start, 1),
                            "cpu_seconds": round(time.process_time() - cpu_start, 1), **acc})
            bar.write(json.dumps(history[-1]))
    train_seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    model.eval()
    results = evaluate_zero_shot(model, tokenizer, cfg.world, cfg.eval_images, cfg.eval_seed)
    results.update(train_seconds=round(train_seconds, 1), train_cpu_seconds=round(cpu_seconds, 1),
                   final_loss=round(loss.item(), 4), history=history,
                   num_parameters=sum(p.numel() for p in model.parameters()),
                   vision_parameters=sum(p.numel() for n, p in model.named_parameters()
                                         if n.startswith(("vision_model", "visual_projection"))))
    return model, tokenizer, results
