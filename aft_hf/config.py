"""One configuration object for a training run, loaded from YAML and overridable from the CLI.

The tree mirrors the data flow of a run (model -> data -> attack -> optim -> checkpoint/logging).
Every problem found in a config (unknown key, wrong type, bad value) is collected and reported
together in one :class:`ConfigError`, once, at start-up, before any model is loaded.

Overrides are ``--section.field value`` (or ``--section.field=value``). A bare ``--field value``
is accepted when ``field`` names exactly one leaf of the tree (``--lr`` means ``--optim.lr``),
and the argument names of the Hugging Face ``*_no_trainer`` examples work as aliases
(:data:`ALIASES`). Values are parsed as YAML scalars, so ``--attack.eps 2``,
``--model.output_normalize false`` and ``--optim.betas [0.9,0.98]`` all work; a boolean field
given without a value (``--cpu``, ``--perf.fused_adamw``) means ``true``.

Field documentation is the string literal under each field (or ``metadata={"help": ...}``);
``aft-hf train --help`` prints it (see :mod:`aft_hf.config_help`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .constants import LLAVA_FEATURE_LAYER
from .errors import AftError
from .threat_models import DEFAULT_NORM, available_norms, get_threat_model, robust_budget_problems, still_start_problem

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")
HUB_STRATEGIES = ("end", "every_save", "checkpoint")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "none", "all")


class ConfigError(AftError, ValueError):
    """Raised with every problem in a configuration, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class ModelConfig:
    """Which CLIP to fine-tune and how its embeddings are compared."""

    name_or_path: str = "openai/clip-vit-base-patch16"
    """Hub id or local folder of a `CLIPModel`, `CLIPVisionModelWithProjection` or `CLIPVisionModel`
    (or a `SiglipModel` / `SiglipVisionModel`: docs/vlm.md).
    `builtin:tiny-clip` builds a tiny random CLIP (offline smoke runs)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of `name_or_path`."""
    output_normalize: bool = True
    """L2-normalise embeddings before the squared distance (g in docs/method.md#objective)."""
    attn_implementation: str = "sdpa"
    """`sdpa` or `eager`; `flash_attention_2` only with CUDA and the flash-attn package."""
    embedding: str = "pooled"
    """What AFT keeps close: `pooled` (the projected embedding; a bare CLIPVisionModel's pooled
    output) or `patch_tokens` (the patch tokens of `model.feature_layer`, as LLaVA consumes them; the
    distance is the mean over patches of the per-patch squared distance)."""
    feature_layer: int = LLAVA_FEATURE_LAYER
    """`patch_tokens`: the hidden state whose patch tokens AFT keeps close, counted as a VLM's
    `vision_feature_layer` (-2: the penultimate layer, LLaVA-1.5's; -1: the last, e.g. LLaVA-OneVision's
    shortened SigLIP tower). `aft-hf graft` refuses a VLM that reads another layer."""
    image_size: Optional[int] = None
    """Input side in pixels; null: the checkpoint's (336 for openai/clip-vit-large-patch14-336). Another
    size (a multiple of the patch size) interpolates the position embeddings once at load; the model is
    trained, evaluated and exported at that size (config, position table and processor). See docs/vlm.md."""
    text_model: Optional[str] = None
    """Full CLIP checkpoint whose (frozen) text tower builds the class embeddings of `objective: tecoa`;
    null: the base's own (a vision-only base then needs it)."""


@dataclass
class DataConfig:
    """Where training images come from. Labels are read only by an objective that needs them (`tecoa`)."""

    dataset: str = "ILSVRC/imagenet-1k"
    """Hub dataset id; a local folder of images, of parquet/arrow or webdataset `.tar` shards (as `hf download`
    leaves a Hub dataset) or written by `save_to_disk`; `imagefolder` (with `data_dir`); or `builtin:shapes`."""
    data_dir: Optional[str] = None
    """Folder of images for `imagefolder` (passed to `datasets.load_dataset`)."""
    config_name: Optional[str] = None
    """Dataset configuration name (passed to `datasets.load_dataset`)."""
    split: str = "train"
    """Dataset split to train on."""
    image_column: str = "image"
    """Column holding the images."""
    label_column: str = "label"
    """Column of integer class labels, read only when the objective needs labels (`objective: tecoa`): an
    imagefolder's class folders, a `label` column (ImageNet), or metadata.jsonl from `aft-hf world sample`."""
    class_names: Optional[str] = None
    """Class names of the labels (as `eval.class_names`): null = the label column's ClassLabel names (or the
    world.json of an `aft-hf world sample` folder), `imagenet` = the shipped ImageNet-1k names, or a file."""
    templates: Optional[str] = None
    """Prompt templates of the class embeddings (as `aft-hf evaluate --templates`): `simple`, `clip80`, a file
    (one per line) or one template with {}; null: clip80 for ImageNet-1k's classes, else simple."""
    streaming: bool = False
    """Stream the dataset (split across processes, shuffled with a buffer)."""
    shuffle_buffer: int = 10_000
    """Buffer size of the approximate shuffle of a streamed dataset."""
    num_workers: int = 0
    """DataLoader worker processes (images are decoded there)."""
    max_samples: Optional[int] = None
    """Use only the first N examples (before shuffling)."""
    max_image_pixels: int = 64_000_000
    """Images with more pixels than this (read from the file header, before decoding) are skipped."""
    max_aspect_ratio: float = 50.0
    """Images whose long side exceeds this multiple of the short side are skipped (header check)."""
    max_bad_fraction: float = 0.1
    """Stop with an error when more than this share of the images read so far were unreadable
    (judged once at least 20 have been read)."""
    stall_warning_s: float = 300.0
    """Log a warning when the data pipeline has delivered nothing for this many seconds; 0 disables."""
    read_retries: int = 3
    """Retries of a streamed read that raised (then that record is skipped as unreadable)."""


@dataclass
class AttackConfig:
    """The inner PGD attack. Budgets are in 1/255 pixel units, as in the papers."""

    norm: str = DEFAULT_NORM
    """Threat model: a name registered in aft_hf.threat_models (built in: linf, l2, huber, elastic, group;
    docs/threat_models.md)."""
    eps: float = 4.0
    """Attack budget in 1/255 pixel units."""
    eps2: float = 0.0
    """Second budget of the norms that have one (huber, elastic; see docs/threat_models.md)."""
    steps: int = 10
    """Attack iterations K per image (PGD steps) -- not optimiser steps, see `optim.max_steps`."""
    alpha: float = 1.0
    """Attack step size in 1/255 pixel units."""
    momentum: float = 0.9
    """Momentum of the normalised ascent direction."""
    noise_std: float = 1.0
    """Std of the Gaussian noise added at every attack iteration (1/255 units); 0 disables it."""
    random_start: bool = True
    """Start the attack from uniform noise in the budget."""
    mode: str = "pgd"
    """`pgd`: the adversarial attack. `noise`: a control that replaces the attack by uniform
    random noise of the same budget (no gradient), to separate the adversarial effect."""


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch geometry. `batch_size` is the global batch per optimiser step."""

    lr: float = 1e-5
    """AdamW learning rate (peak, after warm-up)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_steps: int = 20_000
    """Optimiser steps: the length of training -- not attack iterations, see `attack.steps`."""
    warmup_steps: int = 1_400
    """Optimiser steps of linear learning-rate warm-up."""
    scheduler: str = "cosine"
    """A `transformers.get_scheduler` name (cosine decays to 0)."""
    batch_size: int = 128
    """GLOBAL batch per optimiser step, split as batch_size / (processes x accumulation)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimiser step."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping norm; null: off."""
    mixed_precision: Optional[str] = None
    """`no`, `fp16` or `bf16`; null: the launcher decides (`accelerate launch --mixed_precision`,
    its config file, or ACCELERATE_MIXED_PRECISION; `no` when none says). fp16 needs a GPU."""
    per_device_batch_size: Optional[int] = None
    """Images per process per micro-batch; when set, the global batch becomes
    this x processes x gradient_accumulation_steps (replacing `batch_size`)."""
    max_nonfinite_steps: int = 3
    """Stop (exit 2) after this many optimiser steps in a row with a NaN/inf loss or gradient norm;
    each such step is skipped (no update) and counted."""


@dataclass
class CheckpointConfig:
    """Where and how often the run saves itself."""

    output_dir: str = "out"
    """Where checkpoints, logs, `train_summary.json` and `final/` are written."""
    checkpointing_steps: int = 1000
    """Save a resumable `accelerate` state every N optimiser steps (and at the end)."""
    checkpoints_total_limit: Optional[int] = 3
    """Keep the newest N checkpoints; null: keep all."""
    resume_from_checkpoint: Optional[str] = None
    """`latest` or a checkpoint folder."""
    overwrite_output_dir: bool = False
    """Start afresh in an output_dir that holds another run's checkpoints (deletes them) or finished model
    (`final/` and `train_summary.json`, replaced at the end of the run)."""
    allow_config_change: bool = False
    """Resume with a config that changes the optimisation (optimiser, schedule, batch geometry, seed of
    the data order; recorded). The model, data set, objective and attack never change in a resume
    (docs/training.md)."""


@dataclass
class LoggingConfig:
    """Trackers and how often they receive metrics."""

    report_to: str = "tensorboard"
    """An accelerate tracker (tensorboard, wandb, ...; installed separately) or `none`."""
    log_every: int = 10
    """Optimiser steps between logged metrics."""
    project_name: str = "aft_hf"
    """Project (run group) name given to the tracker."""


@dataclass
class PerfConfig:
    """Speed switches; each is measured by ``benchmarks/aft_step.py`` and off/auto by default."""

    freeze_params_in_attack: bool = True
    """Attack passes compute only d/d delta (no parameter graph): less memory, less work."""
    fused_adamw: Optional[bool] = None
    """Fused AdamW kernel (one kernel for the whole update); default: on for CUDA and CPU, off elsewhere."""
    compile: bool = False
    """``torch.compile`` the vision tower (pays a compilation delay first)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the update backward (large models, small memory)."""
    patch_embedding_matmul: bool = True
    """Compute the ViT patch embedding (stride = kernel convolution) as a matmul: same numbers, and its
    input gradient, needed at every attack iteration, is several times faster on CPU."""
    class_token_last_layer: bool = True
    """During each AFT step, the last layer of a CLIP tower whose embedding is the pooled class token computes
    that token's row alone (the other rows feed nothing the loss reads): same numbers, about four fifths of one
    layer less work in every attack and update pass. Off: the whole layer, as transformers runs it."""


@dataclass
class LoraConfig:
    """LoRA adapters on the vision tower (peft); off while `r` is 0. See docs/lora.md."""

    r: int = 0
    """Rank of the adapters; 0: off (full fine-tuning)."""
    alpha: float = 16.0
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapters' input during training."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    """Names of the linear layers that get adapters (a CLIP tower's attention and MLP layers by default)."""
    save_adapter: bool = False
    """Also write the adapter alone, in peft's format, to `final/adapter/` (`final/` always holds merged
    weights that load without peft)."""


@dataclass
class HubConfig:
    """Publishing `final/` on the Hugging Face Hub at the end of training."""

    push_to_hub: bool = False
    """Push `final/` (with its model card) when training ends."""
    hub_model_id: Optional[str] = None
    """Repo id to push to, e.g. `me/clip-vit-b16-aft`."""
    private: bool = False
    """Create the Hub repo as private."""
    strategy: str = "end"
    """When to push during training (as the transformers Trainer's `hub_strategy`): `end` the final
    model only; `every_save` also the exported model at every checkpoint save; `checkpoint` also the
    latest checkpoint folder under `last-checkpoint/` (to resume elsewhere). Uploads run in the
    background, are retried, and a failed one never stops the run."""
    upload_timeout_s: float = 60.0
    """When training ends with background uploads pending (strategies `every_save`, `checkpoint`) and
    the Hub fails (no network), wait at most this long; then stop retrying, list what was not
    uploaded and name the command that uploads the final model (`aft-hf push <output_dir>/final`).
    Uploads that go through are waited for, however long they take."""


@dataclass
class EvalConfig:
    """Evaluation on held-out images while training (main process only; off by default).

    Field names carry an `eval_` prefix where a bare `--name` override would otherwise become
    ambiguous with a `data.*` field."""

    every_steps: Optional[int] = None
    """Evaluate every N optimiser steps, before the first and after the last (0 or null: off)."""
    eval_dataset: Optional[str] = None
    """Hub id, `imagefolder` (with `eval_data_dir`) or a local folder; null: `data.dataset`."""
    eval_data_dir: Optional[str] = None
    """Folder of images when `eval_dataset` is `imagefolder`."""
    eval_split: Optional[str] = None
    """null: `validation`, else `test`, else the first split. Slices hold images out of a training
    split: `data.split: train[:90%]` with `eval.eval_split: train[90%:]`."""
    num_samples: int = 256
    """Images evaluated (a fixed, seeded subset)."""
    label_column: str = "label"
    """Column holding the integer class labels of the held-out images."""
    class_names: Optional[str] = None
    """Zero-shot class names: null = the label column's ClassLabel names (else the `classnames.txt` of a
    local eval folder, as `aft-hf world sample` writes), `imagenet` = the shipped ImageNet-1k names, or a
    file with one name per line."""
    robust_eps: list[float] = field(default_factory=lambda: [1.0, 4.0])
    """L-inf budgets (1/255 units) of the robust zero-shot accuracy; [] for clean accuracy only."""
    attack_steps: int = 5
    """Iterations of the package's L-inf PGD (momentum, random start) behind the robust accuracy: a fast
    estimate that over-estimates robustness; `aft-hf evaluate` runs the protocol's APGD-CE+APGD-T."""
    eval_batch_size: int = 64
    """Images per forward pass of the evaluation."""


@dataclass
class TrainConfig:
    """The whole run. Load with :func:`load_config`; every field can be overridden from the CLI."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0
    """Seeds model initialisation order, data order and attack noise."""
    cpu: Optional[bool] = None
    """Force CPU (also for multi-process CPU runs). Default: CPU when no CUDA device exists."""
    objective: str = "embedding"
    """What training minimises under attack: `embedding` (AFT: distance to the frozen original's embedding) or
    `tecoa` (cross-entropy of the zero-shot logits, needs labels; docs/tecoa.md). Registered in aft_hf.objectives."""
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; convert ints to floats where a float is wanted."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, problems)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        return [_coerce(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads '1e-5' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        if number is not None:
            problems.append(f"{where}: must be a finite number, got {value!r}")
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    problems.append(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def _build(cls, data: Any, where: str, problems: list[str]):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'}: expected a mapping, got {data!r}")
        return cls()
    kwargs = {}
    types_ = _field_types(cls)
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1, cutoff=0.6)
            hint = f"; did you mean '{where + '.' if where else ''}{close[0]}'?" if close else ""
            problems.append(f"unknown key '{path}'{hint} (known: {', '.join(types_)})")
            continue
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, problems)
        else:
            before = len(problems)
            coerced = _coerce(value, tp, path, problems)
            if len(problems) == before:  # a mistyped value keeps the default, so value checks still run
                kwargs[key] = coerced
    return cls(**kwargs)


def leaf_paths(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted field name of the config tree, e.g. ``attack.eps``."""
    paths = []
    for name, tp in _field_types(cls).items():
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            paths.extend(leaf_paths(tp, path + "."))
        else:
            paths.append(path)
    return paths


def _leaf_type(path: str):
    cls = TrainConfig
    *parents, leaf = path.split(".")
    for p in parents:
        cls = _field_types(cls)[p]
    return _field_types(cls)[leaf]


# Argument names of the Hugging Face `run_*_no_trainer.py` examples, accepted as overrides.
# (`output_dir`, `seed`, `report_to`, `checkpointing_steps`, `resume_from_checkpoint`,
# `push_to_hub`, `hub_model_id`, `gradient_accumulation_steps`, `weight_decay` are our own leaf
# names already.) `per_device_train_batch_size` maps to `optim.per_device_batch_size`, NOT to the
# global `optim.batch_size`: the global batch is computed from it at launch.
ALIASES = {
    "model_name_or_path": "model.name_or_path",
    "dataset_name": "data.dataset",
    "dataset_config_name": "data.config_name",
    "learning_rate": "optim.lr",
    "lr_scheduler_type": "optim.scheduler",
    "num_warmup_steps": "optim.warmup_steps",
    "max_train_steps": "optim.max_steps",
    "per_device_train_batch_size": "optim.per_device_batch_size",
}
# Names refused although they would match a leaf: each could mean two different things.
AMBIGUOUS = {
    "steps": "'--steps' is ambiguous: use --attack.steps for the attack iterations K per image, "
             "or --optim.max_steps (alias --max_train_steps) for the optimiser steps of training",
}


def _override_names() -> list[str]:
    """Every name an override may use: dotted paths, unique leaf names, aliases."""
    paths = leaf_paths()
    leaves = [p.split(".")[-1] for p in paths]
    unique = [name for name in leaves if leaves.count(name) == 1 and name not in AMBIGUOUS]
    return paths + unique + list(ALIASES)


def resolve_key(key: str, problems: list[str]) -> Optional[str]:
    """Map an override key (dotted, a unique bare leaf name, or an alias) to its dotted path."""
    key = key.replace("-", "_")
    paths = leaf_paths()
    if key in paths:
        return key
    if key in AMBIGUOUS:
        problems.append(AMBIGUOUS[key])
        return None
    if key in ALIASES:
        return ALIASES[key]
    matches = [p for p in paths if p.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        problems.append(f"ambiguous override '--{key}': use one of {', '.join('--' + m for m in matches)}")
    else:
        # the train command's own options too, spelled as argparse knows them
        names = {n: n for n in _override_names()} | {"config": "config", "print_config": "print-config",
                                                     "list_configs": "list-configs"}
        close = [names[c] for c in difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)]
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else \
            " (aft-hf train --help lists every field)"
        problems.append(f"unknown override '--{key}'{hint}")
    return None


def _is_bool(tp: Any) -> bool:
    """``bool`` or ``Optional[bool]``: a flag that may be given without a value."""
    return tp is bool or (typing.get_origin(tp) in (Union, types.UnionType) and
                          set(typing.get_args(tp)) == {bool, type(None)})


def parse_overrides(args: list[str]) -> tuple[dict, list[str]]:
    """Turn ``['--attack.eps', '2', '--lr=1e-4', '--hub.push_to_hub']`` into a nested dict."""
    problems: list[str] = []
    nested: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            problems.append(f"unexpected argument '{arg}' (overrides look like --section.field value)")
            i += 1
            continue
        key, eq, raw = arg[2:].partition("=")
        i += 1
        path = resolve_key(key, problems)
        if not eq:
            if i < len(args) and not args[i].startswith("--"):
                raw = args[i]
                i += 1
            elif path is not None and _is_bool(_leaf_type(path)):
                raw = "true"
            else:
                if path is not None:  # an unknown name is reported once, above
                    problems.append(f"override '--{key}' needs a value")
                continue
        if path is None:
            continue
        tp = _leaf_type(path)
        if tp in (str, Optional[str]):  # strings stay as typed: '--model.name_or_path 123' is a path
            value = None if tp is not str and raw.lower() in ("null", "none", "~") else raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested, problems


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read YAML (optional), apply CLI overrides, validate, and return the config.

    ``path`` is a YAML file or the name of a shipped recipe (``tiny_offline``, see
    :mod:`aft_hf.recipes`). Raises :class:`ConfigError` listing every problem found.
    """
    from .recipes import list_recipes, resolve_config_path

    problems: list[str] = []
    data: dict = {}
    if path is not None:
        path = resolve_config_path(path)
        if not path.is_file():
            raise ConfigError([f"config file not found: {path} (shipped recipes: {', '.join(list_recipes())})"])
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    override_dict, override_problems = parse_overrides(overrides or [])
    problems.extend(override_problems)
    if {"batch_size", "per_device_batch_size"} <= set(override_dict.get("optim", {})):
        problems.append("give either --optim.batch_size (the global batch) or --optim.per_device_batch_size "
                        "(alias --per_device_train_batch_size), not both")
    if isinstance(data, dict):
        data = _merge(data, override_dict)
    cfg = _build(TrainConfig, data, "", problems)
    problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _validate_data_limits(d: DataConfig) -> list[str]:
    """Checks of the data-quality fields (limits on images, bad samples, stalls, retries)."""
    from .data.synthetic import BUILTIN_DATASETS

    p = []
    if d.dataset.startswith("builtin:") and d.dataset not in BUILTIN_DATASETS:
        p.append(f"data.dataset: unknown builtin dataset '{d.dataset}' (known: {', '.join(BUILTIN_DATASETS)}); "
                 "or give a Hub dataset id or a local folder")
    if d.max_image_pixels <= 0:
        p.append(f"data.max_image_pixels: must be > 0, got {d.max_image_pixels}")
    if d.max_aspect_ratio < 1:
        p.append(f"data.max_aspect_ratio: must be >= 1, got {d.max_aspect_ratio}")
    if not 0 <= d.max_bad_fraction <= 1:
        p.append(f"data.max_bad_fraction: must be in [0, 1], got {d.max_bad_fraction}")
    if d.stall_warning_s < 0:
        p.append(f"data.stall_warning_s: must be >= 0 (0 disables), got {d.stall_warning_s}")
    if d.read_retries < 0:
        p.append(f"data.read_retries: must be >= 0, got {d.read_retries}")
    return p


def _validate_lora(lora: LoraConfig) -> list[str]:
    p = []
    if lora.r < 0:
        p.append(f"lora.r: must be >= 0 (0: off), got {lora.r}")
    if lora.r != 0:  # a negative r is a mistyped rank: report the adapter's other problems with it, in one message
        if lora.alpha <= 0:
            p.append(f"lora.alpha: must be > 0, got {lora.alpha}")
        if not 0 <= lora.dropout < 1:
            p.append(f"lora.dropout: must be in [0, 1), got {lora.dropout}")
        if not lora.target_modules:
            p.append("lora.target_modules: name at least one linear layer (e.g. [q_proj,v_proj])")
    else:  # LoRA is off: an adapter option given without a rank would be ignored, and the run be full fine-tuning
        given = [f"lora.{f.name}" for f in dataclasses.fields(lora)
                 if f.name != "r" and getattr(lora, f.name) != getattr(LoraConfig(), f.name)]
        if given:
            p.append(f"{', '.join(given)}: read only with LoRA on, and lora.r is 0 (off, full fine-tuning): set "
                     "lora.r, e.g. --lora.r 8")
    return p


def validate(cfg: TrainConfig) -> list[str]:
    """Value checks that need more than a type: returns the list of problems (empty when fine)."""
    p: list[str] = _validate_lora(cfg.lora)
    a, o, d, c, lg = cfg.attack, cfg.optim, cfg.data, cfg.checkpoint, cfg.logging
    if a.norm not in available_norms():
        p.append(f"attack.norm: unknown norm '{a.norm}' (choose from {', '.join(available_norms())}; a norm you "
                 "registered in Python exists in that process only: train there with aft_hf.train.train)")
    if a.mode not in ("pgd", "noise"):
        p.append(f"attack.mode: unknown mode '{a.mode}' (choose pgd or noise)")
    for name in ("eps", "eps2", "alpha", "noise_std"):
        if getattr(a, name) < 0:
            p.append(f"attack.{name}: must be >= 0, got {getattr(a, name)}")
    if a.norm in available_norms() and a.eps >= 0 and a.eps2 >= 0:  # the norm's own rules (threat_models)
        p += [f"attack.{name}: {message}"
              for name, message in get_threat_model(a.norm).budget_problems(a.eps, a.eps2, a.steps, per255=True)]
    if a.steps < 0:
        p.append(f"attack.steps: must be >= 0, got {a.steps}")
    if not 0 <= a.momentum < 1:
        p.append(f"attack.momentum: must be in [0, 1), got {a.momentum}")
    if o.lr <= 0:
        p.append(f"optim.lr: must be > 0, got {o.lr}")
    if o.weight_decay < 0:
        p.append(f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        p.append(f"optim.betas: expected two numbers in [0, 1), got {o.betas}")
    if o.max_steps <= 0:
        p.append(f"optim.max_steps: must be > 0, got {o.max_steps}")
    if o.warmup_steps < 0:
        p.append(f"optim.warmup_steps: must be >= 0, got {o.warmup_steps}")
    elif o.warmup_steps > o.max_steps:
        p.append(f"optim.warmup_steps ({o.warmup_steps}) is longer than training (optim.max_steps={o.max_steps})")
    if o.scheduler not in SCHEDULERS:
        p.append(f"optim.scheduler: unknown scheduler '{o.scheduler}' (choose from {', '.join(SCHEDULERS)})")
    if o.batch_size <= 0:
        p.append(f"optim.batch_size: must be > 0, got {o.batch_size}")
    if o.gradient_accumulation_steps <= 0:
        p.append(f"optim.gradient_accumulation_steps: must be > 0, got {o.gradient_accumulation_steps}")
    elif o.per_device_batch_size is None and o.batch_size > 0 and o.batch_size % o.gradient_accumulation_steps:
        p.append(
            f"optim.batch_size ({o.batch_size}) is not divisible by "
            f"optim.gradient_accumulation_steps ({o.gradient_accumulation_steps})"
        )
    if o.per_device_batch_size is not None and o.per_device_batch_size <= 0:
        p.append(f"optim.per_device_batch_size: must be > 0 or null, got {o.per_device_batch_size}")
    if o.max_grad_norm is not None and o.max_grad_norm <= 0:
        p.append(f"optim.max_grad_norm: must be > 0 or null, got {o.max_grad_norm}")
    if o.mixed_precision is not None and o.mixed_precision not in MIXED_PRECISION:
        p.append(f"optim.mixed_precision: unknown value '{o.mixed_precision}' (choose from {', '.join(MIXED_PRECISION)})")
    if d.shuffle_buffer <= 0:
        p.append(f"data.shuffle_buffer: must be > 0, got {d.shuffle_buffer}")
    if d.num_workers < 0:
        p.append(f"data.num_workers: must be >= 0, got {d.num_workers}")
    if d.max_samples is not None and d.max_samples <= 0:
        p.append(f"data.max_samples: must be > 0 or null, got {d.max_samples}")
    p += _validate_data_limits(d)
    if not d.image_column:
        p.append("data.image_column: must not be empty")
    if c.checkpointing_steps <= 0:
        p.append(f"checkpoint.checkpointing_steps: must be > 0, got {c.checkpointing_steps}")
    if c.checkpoints_total_limit is not None and c.checkpoints_total_limit <= 0:
        p.append(f"checkpoint.checkpoints_total_limit: must be > 0 or null, got {c.checkpoints_total_limit}")
    if lg.report_to not in TRACKERS:
        p.append(f"logging.report_to: unknown tracker '{lg.report_to}' (choose from {', '.join(TRACKERS)})")
    if lg.log_every <= 0:
        p.append(f"logging.log_every: must be > 0, got {lg.log_every}")
    if cfg.hub.push_to_hub and not cfg.hub.hub_model_id:
        p.append("hub.push_to_hub needs hub.hub_model_id (e.g. --hub_model_id me/clip-vit-b16-aft)")
    p.extend(_validate_model(cfg.model))
    p.extend(_validate_eval_and_hub(cfg))
    p.extend(_local_markers(cfg))
    p.extend(_validate_run(cfg))
    p.extend(_output_inside_data(cfg))
    from .objectives import objective_problems

    p.extend(objective_problems(cfg))
    return p


def _output_inside_data(cfg: TrainConfig) -> list[str]:
    """An ``output_dir`` that is, or lies inside, a local data folder: refused.

    ``datasets`` reads such a folder whole and infers its splits from file names, so the run's own files
    (``train_summary.json``, ``checkpoints/*/eval_history.json``) would become data, or split the folder
    into 'train' and 'test' and break it as a data set on the next run or resume. Data inside output_dir
    is fine (nothing the run writes lands in it).
    """
    out = Path(cfg.checkpoint.output_dir).expanduser().resolve()
    folders = [("data.dataset", cfg.data.dataset), ("data.data_dir", cfg.data.data_dir),
               ("eval.eval_dataset", cfg.eval.eval_dataset), ("eval.eval_data_dir", cfg.eval.eval_data_dir)]
    p = []
    for key, value in folders:
        folder = Path(value).expanduser() if value and value != "imagefolder" else None
        if folder is not None and folder.is_dir() and (out == folder.resolve() or folder.resolve() in out.parents):
            p.append(f"output_dir '{cfg.checkpoint.output_dir}' lies inside the data folder {key} '{value}': the run's files "
                     "would be read as data and break it as a data set; choose an output_dir outside it")
    return p


def _validate_model(m: ModelConfig) -> list[str]:
    """The ``model.*`` values that need more than a type."""
    p = []
    if m.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
        p.append(f"model.attn_implementation: unknown value '{m.attn_implementation}'")
    if m.image_size is not None and m.image_size <= 0:
        p.append(f"model.image_size: must be > 0 or null (the checkpoint's), got {m.image_size}")
    if m.embedding not in ("pooled", "patch_tokens"):
        p.append(f"model.embedding: unknown value '{m.embedding}' (choose pooled or patch_tokens)")
    if not isinstance(m.feature_layer, int) or isinstance(m.feature_layer, bool):
        p.append(f"model.feature_layer: a hidden state's index (e.g. -2, the penultimate layer), got {m.feature_layer!r}")
    elif m.feature_layer != LLAVA_FEATURE_LAYER and m.embedding != "patch_tokens":
        p.append("model.feature_layer is read only with model.embedding patch_tokens (pooled embeddings come from "
                 "the last layer)")
    return p


def _local_markers(cfg: TrainConfig) -> list[str]:
    """A ``local:<name>`` left from a config downloaded from the Hub (aft_hf.published) is no path: ask for it."""
    from .published import LOCAL_PREFIX

    return [f"{key}: '{value}' stands for a local folder of the machine that published this config: give its "
            f"path here (--{key} /path/to/{value[len(LOCAL_PREFIX):]})"
            for key, value in flatten(cfg.to_dict()).items()
            if isinstance(value, str) and value.startswith(LOCAL_PREFIX)]


def config_from_dict(data: dict) -> TrainConfig:
    """The config a saved ``aft_config.yaml`` (as a dict) describes, unvalidated: fields it lacks keep their
    defaults, and fields this version does not know are dropped (a recipe of another aft_hf version)."""
    return _build(TrainConfig, data if isinstance(data, dict) else {}, "", [])


NOISE_UNREAD = ("attack.steps", "attack.alpha", "attack.momentum", "attack.noise_std", "attack.random_start")
"""The attack proper's settings, which ``attack.mode: noise`` (a random sample of the budget) never reads."""


def unread_fields(cfg: TrainConfig, given_only: bool = True) -> list[str]:
    """The fields this run never reads, so their values change nothing: the attack's own settings under
    ``attack.mode: noise``, ``attack.eps2`` of a norm without a second budget, and the fields of another objective
    (:attr:`aft_hf.objectives.Objective.reads`). ``given_only``: only those set other than their defaults (what
    ``aft-hf train`` warns about; the model card marks them all)."""
    from .objectives import OBJECTIVES

    unread = list(NOISE_UNREAD) if cfg.attack.mode == "noise" else []
    if cfg.attack.norm in available_norms() and not get_threat_model(cfg.attack.norm).uses_eps2:
        unread.append("attack.eps2")
    chosen = set(OBJECTIVES[cfg.objective].reads) if cfg.objective in OBJECTIVES else set()
    unread += sorted({f for name in OBJECTIVES.names() for f in OBJECTIVES[name].reads} - chosen)
    if not given_only:
        return unread
    now, default = flatten(cfg.to_dict()), flatten(TrainConfig().to_dict())
    return [f for f in unread if now.get(f) != default.get(f)]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.field": value}`` (the names overrides and resume rules use)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _validate_eval_and_hub(cfg: TrainConfig) -> list[str]:
    p: list[str] = []
    e = cfg.eval
    if e.every_steps is not None and e.every_steps < 0:
        p.append(f"eval.every_steps: must be >= 0 (0 or null: off), got {e.every_steps}")
    for name in ("num_samples", "eval_batch_size"):
        if getattr(e, name) <= 0:
            p.append(f"eval.{name}: must be > 0, got {getattr(e, name)}")
    if e.attack_steps < 0:
        p.append(f"eval.attack_steps: must be >= 0, got {e.attack_steps}")
    if any(x <= 0 for x in e.robust_eps):
        p.append(f"eval.robust_eps: budgets must be > 0 (1/255 units), got {e.robust_eps}")
    p += [f"eval.robust_eps: {problem}" for problem in robust_budget_problems(x for x in e.robust_eps if x > 0)]
    if cfg.hub.upload_timeout_s < 0:
        p.append(f"hub.upload_timeout_s: must be >= 0 seconds, got {cfg.hub.upload_timeout_s}")
    if cfg.hub.strategy not in HUB_STRATEGIES:
        p.append(f"hub.strategy: unknown value '{cfg.hub.strategy}' (choose from {', '.join(HUB_STRATEGIES)})")
    elif cfg.hub.strategy != "end" and not cfg.hub.push_to_hub:
        p.append(f"hub.strategy '{cfg.hub.strategy}' pushes during training: it needs hub.push_to_hub "
                 "(and hub.hub_model_id)")
    return p


def _validate_run(cfg: TrainConfig) -> list[str]:
    """Checks that keep a run from being silently useless: a no-op attack, seeds numpy rejects, ..."""
    p: list[str] = []
    a, o = cfg.attack, cfg.optim
    still = still_start_problem(a.random_start, a.noise_std, a.steps, prefix="attack.")
    if a.mode == "pgd" and still:
        p.append(still)
    if o.max_nonfinite_steps < 1:
        p.append(f"optim.max_nonfinite_steps: must be >= 1, got {o.max_nonfinite_steps}")
    if not 0 <= cfg.seed <= 2**32 - 1:
        p.append(f"seed: must be in [0, 2**32 - 1] (numpy's range), got {cfg.seed}")
    return p
