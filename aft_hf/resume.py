"""Resuming: which config changes a resume may bring, and applying the optimiser fields that changed.

A resume continues one optimisation. Changing what is optimised (model, data, attack, optimiser,
seed) part-way makes a run that no config describes, so such changes are refused unless
``--allow_config_change`` is given; then the *new* values are used from the resume step on (the
checkpoint's optimiser moments and step count are kept, its learning rate, betas and weight decay
are replaced), and the change is recorded in ``train_summary.json`` (``config_changes``).
Fields that do not alter the optimisation may always change: ``checkpoint.*``, ``logging.*``,
``hub.*``, ``perf.*``, ``cpu``, ``data.num_workers``, ``model.attn_implementation``; so may
``optim.max_steps`` when it grows (train longer; the schedule is stretched to the new length).
"""

from __future__ import annotations

from typing import Any, Optional

import yaml

from .checkpointing import CONFIG_FILE
from .config import ConfigError, TrainConfig
from .published import matches_published

FREE_SECTIONS = ("checkpoint", "logging", "hub", "perf")
FREE_FIELDS = ("cpu", "data.num_workers", "model.attn_implementation")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def optimisation_changes(saved: dict, new: TrainConfig) -> list[str]:
    """``"optim.lr: 0.0001 -> 0.01"`` for every field that differs and alters the optimisation."""
    old, cur = _flat(saved), _flat(new.to_dict())
    changes = []
    for key in sorted(set(old) | set(cur)):
        if key.split(".")[0] in FREE_SECTIONS or key in FREE_FIELDS or key not in old:
            continue  # a field unknown to the older checkpoint keeps its default meaning
        a, b = old.get(key), cur.get(key)
        if key == "optim.max_steps" and isinstance(a, int) and isinstance(b, int) and b >= a:
            continue
        if not matches_published(a, b):  # a checkpoint from the Hub records local paths as local:<name>
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes


def check_resume_config(checkpoint, cfg: TrainConfig) -> list[str]:
    """Compare the checkpoint's saved config with ``cfg``; raise unless the differences are allowed.

    Returns the (allowed) optimisation changes; a checkpoint from before configs were saved is
    accepted as is.
    """
    path = checkpoint / CONFIG_FILE
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text()) or {}
    changes = optimisation_changes(saved, cfg)
    if changes and not cfg.checkpoint.allow_config_change:
        raise ConfigError([f"resuming from {checkpoint} with settings that change the optimisation (saved -> new):"]
                          + changes
                          + ["resume with the saved values, or add --allow_config_change to continue with the new "
                             "ones (they apply from the resume step on and are recorded in train_summary.json)"])
    return changes


def apply_optim_config(optimizer, scheduler, cfg: TrainConfig) -> None:
    """Make the loaded optimiser/scheduler follow ``cfg`` (lr, betas, weight decay, schedule).

    ``load_state`` restores the checkpoint's learning rate into the scheduler's ``base_lrs``, which
    would silently override a new ``optim.lr``. The current lr is recomputed exactly as the scheduler
    does (``base_lr * lambda(last_epoch)``), so with an unchanged config this changes no bit.
    """
    opt = getattr(optimizer, "optimizer", optimizer)
    sched = getattr(scheduler, "scheduler", scheduler)
    for group in opt.param_groups:
        group["initial_lr"] = cfg.optim.lr
        group["betas"] = tuple(cfg.optim.betas)
        group["weight_decay"] = cfg.optim.weight_decay
    sched.base_lrs = [cfg.optim.lr for _ in opt.param_groups]
    lambdas: Optional[list] = getattr(sched, "lr_lambdas", None)
    if lambdas is not None:
        for group, fn, base in zip(opt.param_groups, lambdas, sched.base_lrs):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in opt.param_groups]
