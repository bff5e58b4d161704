"""Resuming: which config changes a resume may bring, and applying the optimiser fields that changed.

A resume continues one optimisation. Every config field falls in one of three kinds, listed in
:data:`RESUME_RULES` (the one table; docs/training.md#resuming shows it):

* ``free``: may always change, because it does not alter what is optimised (evaluation, logging,
  Hub, checkpointing, speed switches; ``optim.max_steps`` when it grows: train longer, the schedule
  is stretched to the new length);
* ``flag``: changes the optimisation but still continues the same model on the same data
  (optimiser, schedule, batch geometry, data-order seed): refused unless ``--allow_config_change``
  is given; then the *new* values apply from the resume step on (the checkpoint's optimiser moments
  and step count are kept, its learning rate, betas and weight decay are replaced) and the change
  is recorded in ``train_summary.json`` (``config_changes``). A new batch geometry resumes at the
  same image of the epoch (see :func:`aft_hf.data.loading.epoch_position`);
* ``never``: what defines the run (model, data set, objective, attack): a resume that changes it is
  not the same run, so it is refused even with the flag, naming the field.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Optional

import yaml

from .checkpointing import CONFIG_FILE
from .config import ConfigError, TrainConfig, flatten
from .published import PATH_FIELDS, matches_published


class Change(enum.Enum):
    """What a resume may do with a field."""

    FREE = "free"
    RECORDED = "recorded"  # free, but it reshapes what follows: recorded in train_summary.json (a longer run)
    FLAG = "flag"
    NEVER = "never"


# The table. A dotted field overrides its section; every field of TrainConfig is covered
# (tests/test_resume.py checks it), a section not named here (a new one) needs the flag.
RESUME_RULES: dict[str, Change] = {
    # always allowed
    "eval": Change.FREE, "logging": Change.FREE, "hub": Change.FREE, "checkpoint": Change.FREE,
    "perf": Change.FREE, "cpu": Change.FREE, "model.attn_implementation": Change.FREE,
    "data.num_workers": Change.FREE, "data.stall_warning_s": Change.FREE, "data.read_retries": Change.FREE,
    "data.max_bad_fraction": Change.FREE, "optim.max_nonfinite_steps": Change.FREE,
    "optim.max_steps": Change.FREE,  # when it grows; a shorter run needs the flag (see _kind)
    # allowed with --allow_config_change: optimisation, schedule, batch geometry, data order
    "optim": Change.FLAG, "seed": Change.FLAG, "data.shuffle_buffer": Change.FLAG,
    "data.max_image_pixels": Change.FLAG, "data.max_aspect_ratio": Change.FLAG,
    # never: the model, the data set, the objective, the attack (and a LoRA adapter's shape)
    "model": Change.NEVER, "data": Change.NEVER, "attack": Change.NEVER, "lora": Change.NEVER,
    "objective": Change.NEVER, "lora.save_adapter": Change.FREE,  # an export option, not the adapter's shape
}


def kind_of(key: str) -> Change:
    """The rule for one dotted field: its own entry, else its section's, else ``FLAG``."""
    return RESUME_RULES.get(key) or RESUME_RULES.get(key.split(".")[0], Change.FLAG)


def _same_path(a: Any, b: Any, saved_dir: Optional[str] = None) -> bool:
    """Two spellings of one local folder (``m48`` and ``./m48``, relative and absolute) are equal.

    ``a`` is the saved value, relative to ``saved_dir`` (the working directory of the run that saved it) when
    known and still there (a checkpoint brought from another machine falls back), else to the current one;
    ``b`` the new value, relative to the current working directory.
    """
    if not (isinstance(a, str) and isinstance(b, str)) or ":" in a or ":" in b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if saved_dir is not None and not pa.is_absolute() and Path(saved_dir).is_dir():
        pa = Path(saved_dir) / pa
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _elsewhere(key: str, a: Any, b: Any, saved_dir: Optional[str]) -> bool:
    """One relative spelling of a path field that names another existing folder from here than it did from the
    saved run's working directory (``./imgs`` run in ``x``, resumed from ``x/out`` holding its own ``imgs``)."""
    if key not in PATH_FIELDS or a != b or not isinstance(a, str) or ":" in a or saved_dir is None \
            or Path(a).expanduser().is_absolute():
        return False
    return (Path(saved_dir) / a).exists() and Path(b).exists() and not _same_path(a, b, saved_dir)


def _kind(key: str, old: Any, new: Any) -> Change:
    if key == "optim.max_steps" and isinstance(old, int) and isinstance(new, int):
        return Change.FLAG if new < old else Change.RECORDED
    return kind_of(key)


def classify_changes(saved: dict, new: TrainConfig, saved_dir: Optional[str] = None) -> dict[Change, list[str]]:
    """``{kind: ["optim.lr: 0.0001 -> 0.01", ...]}`` for every field that differs.

    A field unknown to the older checkpoint keeps its default meaning and is not a change. ``saved_dir``: the
    working directory the saved config's relative paths are relative to (None: the current one).
    """
    old, cur = flatten(saved), flatten(new.to_dict())
    out: dict[Change, list[str]] = {k: [] for k in Change}
    for key in sorted(set(old) & set(cur)):
        a, b = old[key], cur[key]
        if _elsewhere(key, a, b, saved_dir):
            out[_kind(key, a, b)].append(f"{key}: {a!r} in {saved_dir} -> {b!r} in {Path.cwd()} (another folder)")
        elif not matches_published(a, b) and not _same_path(a, b, saved_dir):  # local:<name> from a Hub checkpoint
            out[_kind(key, a, b)].append(f"{key}: {a!r} -> {b!r}")
    return out


def optimisation_changes(saved: dict, new: TrainConfig) -> list[str]:
    """The changes that need ``--allow_config_change`` (kept for callers of the earlier name)."""
    return classify_changes(saved, new)[Change.FLAG]


def check_resume_config(checkpoint: Path, cfg: TrainConfig, saved_dir: Optional[str] = None) -> list[str]:
    """Compare the checkpoint's saved config with ``cfg``; raise unless the differences are allowed.

    Returns the changes to record: those allowed by the flag, and a longer ``optim.max_steps``; a checkpoint from before configs
    were saved is accepted as is. ``saved_dir``: the working directory of the run that wrote the checkpoint
    (its ``Progress.working_dir``), against which the saved relative paths are resolved.
    """
    path = Path(checkpoint) / CONFIG_FILE
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text()) or {}
    changes = classify_changes(saved, cfg, saved_dir)
    if changes[Change.NEVER]:
        raise ConfigError([f"resuming from {checkpoint} would change what defines the run (saved -> new), "
                           "which no resume may change, not even with --allow_config_change:"]
                          + changes[Change.NEVER]
                          + [f"resume with the saved values (--config {path} holds them), or start a new run in "
                             "another output_dir"])
    if changes[Change.FLAG] and not cfg.checkpoint.allow_config_change:
        raise ConfigError([f"resuming from {checkpoint} with settings that change the optimisation (saved -> new):"]
                          + changes[Change.FLAG]
                          + ["resume with the saved values, or add --allow_config_change to continue with the new "
                             "ones (they apply from the resume step on and are recorded in train_summary.json)"])
    return changes[Change.FLAG] + changes[Change.RECORDED]


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
