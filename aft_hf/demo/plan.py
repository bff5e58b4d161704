"""What the demo and the dose-response study share: options, threat models, data, one fine-tune."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from ..config import load_config
from ..evaluate.metrics import default_tolerance
from ..threat_models import DEFAULT_NORM, THREAT_MODELS, get_threat_model
from ..world.dataset import WorldConfig

if TYPE_CHECKING:
    from .roar import WorldRoar

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "world_aft.yaml"
WORLD_TEMPLATE = "a photo of a {}"
"""The prompt of the world's captions: zero-shot evaluation and TeCoA's class embeddings both use it."""


# The paper's headline budget of each threat model that has one (``ThreatModel.headline``), in 1/255 units:
# (eps, eps2). These are the norms the demo trains. ``--eps E`` sets eps to E, and eps2 too where the
# norm has one (the headline of huber has eps = eps2).
HEADLINE = {name: cls.headline for name, cls in THREAT_MODELS.items() if cls.headline}

# AFT-config fields that every demo run sets itself (``fine_tune``, ``prepare``): an override of one
# would be replaced without a word, so it is refused, naming the demo option that does the job.
DEMO_SET_FIELDS = {
    "seed": "use --seeds N for seeds 0 .. N-1",
    "model.name_or_path": "use --base FOLDER (a world CLIP) to fine-tune another base",
    "data.dataset": "it trains on world images it writes (--train-images N)",
    "data.data_dir": "it trains on world images it writes (--train-images N)",
    "checkpoint.output_dir": "the runs go to OUT/runs/ (--out OUT)",
    "checkpoint.overwrite_output_dir": "a rerun replaces its own runs under --out",
    "attack.mode": "pgd for AFT, noise for the control (--no-control skips the control)",
    "objective": "use --objectives embedding tecoa (each objective is one arm)",
}


@dataclass
class DemoOptions:
    """What the demo runs. Defaults: both threat models x (AFT + noise control) x 1 seed on 64 held-out
    images, sized for the README's 10-minute limit on 2 CPU cores: one seed of both norms took about
    5 minutes there (2 seeds: 603 s measured), so ``--seeds 3`` (about 15 minutes) is an explicit choice."""

    out: str = "demo_out"
    seeds: int = 1
    train_images: int = 1024
    eval_images: int = 64
    methods: Sequence[str] = ("saliency", "gradcam", "attention")
    control: bool = True
    tolerance_px: int = default_tolerance(WorldConfig.image_size)
    """Pointing-game tolerance: `aft-hf evaluate`'s default at the world's 64 px (15 px at 224 px, scaled)."""
    robust_eps: Sequence[float] = (1, 2, 4)
    robust_steps: int = 10
    """Iterations of the robust-accuracy attack (APGD: per run; 100 in AutoAttack, fewer here for time)."""
    train_seed: int = 1000
    eval_seed: int = 2000
    repo_id: str = "your-name/world-clip-aft"
    base: str = "builtin:world-clip"
    """The world CLIP to fine-tune (a folder written by `aft-hf world pretrain`, or the shipped one)."""
    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    progress: bool = True
    norms: Sequence[str] = tuple(HEADLINE)
    """Threat models to fine-tune with (each with its own noise control of the same budget)."""
    eps: Optional[float] = None
    """Trained budget (1/255) for every norm; None: each norm's headline (``HEADLINE``)."""
    robust_attack: str = "apgd"
    robust_targets: int = 3
    """APGD-T target classes (AutoAttack uses 9; fewer here for time)."""
    roar: Optional["WorldRoar"] = None
    """ROAR of the original and each AFT variant on fresh world images (:mod:`aft_hf.demo.roar`); None: skipped
    (the default, which keeps the demo's time)."""
    objectives: Sequence[str] = ("embedding",)
    """Training objectives (aft_hf.objectives), one arm each per threat model: ``embedding`` is AFT (``aft_*``),
    another objective adds the arm ``<objective>_<norm>`` (e.g. ``tecoa_linf``) trained on the world's labels."""


def threat_overrides(norm: str, eps: Optional[float] = None) -> list[str]:
    """Config overrides that set the attack to ``norm`` at ``eps`` (default: the headline budget)."""
    from ..config import ConfigError

    if norm not in HEADLINE:
        raise ConfigError([f"--norms: unknown threat model '{norm}' (the demo runs {', '.join(HEADLINE)})"])
    e, e2 = HEADLINE[norm]
    e = e if eps is None else float(eps)
    args = ["--attack.norm", norm, "--attack.eps", f"{e:g}"]
    if e2 is not None:
        args += ["--attack.eps2", f"{(e2 if eps is None else e):g}"]
    return args


def check_overrides(overrides: Sequence[str], demo_options: Sequence[str] = ()) -> None:
    """Refuse, before any work, the overrides the demo would silently replace (:data:`DEMO_SET_FIELDS`)
    and, when ``demo_options`` (e.g. ``--seeds``) are given, an unknown name that is a typo of one of them:
    left to the config, ``--sedes`` would be answered with the config field ``--seed``."""
    import difflib

    from ..config import ConfigError, resolve_key

    problems = []
    for arg in overrides:
        if not arg.startswith("--"):
            continue
        key = arg[2:].partition("=")[0]
        unknown: list[str] = []
        path = resolve_key(key, unknown)
        if path in DEMO_SET_FIELDS:
            problems.append(f"--{key}: the demo sets it for each run; {DEMO_SET_FIELDS[path]}")
        elif path is None and demo_options and unknown and unknown[0].startswith("unknown override"):
            names = {o.lstrip("-").replace("-", "_"): o for o in demo_options}
            close = difflib.get_close_matches(key.replace("-", "_"), list(names), n=1, cutoff=0.6)
            if close:
                problems.append(f"unknown option '--{key}'; did you mean {names[close[0]]}?")
    if problems:
        raise ConfigError(problems)


def threat_label(cfg) -> str:
    """e.g. ``linf 4/255`` or ``huber 1/255 + 1/255`` from an AttackConfig."""
    return get_threat_model(cfg.norm).budget_label(cfg.eps, cfg.eps2)


def _eval_set(n: int, seed: int, world, text_path: str):
    from ..explain import load_text_tower
    from ..world import generate_arrays
    from .measure import EvalSet

    arrays = generate_arrays(n, seed, world)
    images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255
    masks = torch.from_numpy(arrays["masks"]).unsqueeze(1).float()
    labels = torch.from_numpy(arrays["labels"])
    text = load_text_tower(text_path)
    weights = text.class_embeddings(world.class_names, [WORLD_TEMPLATE])
    return EvalSet(images, masks, labels, weights, text.logit_scale)


@dataclass
class Setup:
    """What every demo/study run shares: the output folder, training data, held-out set, base config."""

    out: Path
    base: str
    world: object
    overrides: list[str]
    train_dir: Path
    data: object
    base_cfg: object


def prepare(opts: DemoOptions) -> Setup:
    """Validate the config and the threat models, write the training imagefolder, build the held-out set."""
    from ..model import resolve_builtin_model
    from ..world import load_world_config, write_imagefolder

    check_overrides(opts.overrides)
    out = Path(opts.out)
    base = resolve_builtin_model(opts.base)
    world = load_world_config(base).world
    overrides = ["--model.name_or_path", opts.base] + list(opts.overrides)  # the name, not a local path
    base_cfg = load_config(opts.config or DEFAULT_CONFIG, overrides)  # validated before any work
    for norm in opts.norms:
        for objective in opts.objectives:
            load_config(opts.config or DEFAULT_CONFIG,
                        threat_overrides(norm, opts.eps) + overrides + objective_overrides(objective))
    _claim_output_folder(out)
    train_dir = out / "data" / f"world_train_seed{opts.train_seed}_n{opts.train_images}"
    _clear_earlier_runs(out, keep=train_dir)
    if not (train_dir / "world.json").is_file():
        write_imagefolder(train_dir, opts.train_images, opts.train_seed, world)
    data = _eval_set(opts.eval_images, opts.eval_seed, world, base)
    return Setup(out, base, world, overrides, train_dir, data, base_cfg)


def objective_overrides(objective: str) -> list[str]:
    """Config overrides of one demo arm's objective (labels and class names come from the world folder)."""
    if objective == "embedding":
        return []
    return ["--objective", objective, "--data.templates", WORLD_TEMPLATE]


def fine_tune(opts: DemoOptions, setup: Setup, norm: str, eps: Optional[float], seed: int, control: bool,
              name: str, objective: str = "embedding"):
    """Train one AFT (or noise-control, or other ``objective``) run with the package trainer; returns
    (config, final folder)."""
    from ..train import train

    extra = ["--data.dataset", "imagefolder", "--data.data_dir", str(setup.train_dir), "--seed", str(seed),
             "--output_dir", str(setup.out / "runs" / f"{name}_seed{seed}"),
             "--checkpoint.overwrite_output_dir", "true"]  # a rerun replaces its own runs
    if control:
        extra += ["--attack.mode", "noise"]
    extra += objective_overrides(objective)
    # the threat model first, so that a user's --attack.* overrides still win
    cfg = load_config(opts.config or DEFAULT_CONFIG, threat_overrides(norm, eps) + setup.overrides + extra)
    logger.info("%s, seed %d: %s, %d steps", name, seed, threat_label(cfg.attack), cfg.optim.max_steps)
    return cfg, train(cfg)


def measure_kwargs(opts: DemoOptions, robust_eps: Sequence[float]) -> dict:
    return dict(methods=opts.methods, tolerance=opts.tolerance_px, robust_eps=robust_eps,
                robust_steps=opts.robust_steps, progress=opts.progress, robust_attack=opts.robust_attack,
                robust_targets=opts.robust_targets)


def robust_settings(opts: DemoOptions) -> dict:
    from ..evaluate.apgd import attack_description

    return {"robust_attack": opts.robust_attack, "robust_steps": opts.robust_steps,
            "robust_targets": opts.robust_targets if opts.robust_attack == "apgd" else None,
            "robust_attack_name": attack_description(  # the reports add APGD's iterations and targets themselves
                opts.robust_attack, DEFAULT_NORM, opts.robust_steps if opts.robust_attack == "pgd" else None)}


def _clear_earlier_runs(out: Path, keep: Path) -> None:
    """Remove what an earlier demo/study wrote into ``out`` for another configuration: every run (this one
    retrains all of its own, so a run left from other --norms, --seeds or --no-control would be read as
    part of this one) and training images of another seed or size (``keep`` is reused)."""
    import shutil

    stale = [out / "runs"] + [d for d in (out / "data").glob("world_train_*") if d != keep]
    for folder in (f for f in stale if f.is_dir()):
        logger.info("removing %s, written by an earlier run of the demo into --out", folder)
        shutil.rmtree(folder)


def _claim_output_folder(out: Path) -> None:
    """The demo writes into ``out`` again on a rerun: allowed for a folder it wrote (marker, or an earlier
    version's demo folder with ``report.json`` and ``runs/``), refused for anyone else's non-empty folder."""
    from ..outputs import MARKER, check_output_dir, write_marker

    if out.is_dir() and not (out / MARKER).exists() and (out / "report.json").is_file() and (out / "runs").is_dir():
        write_marker(out, "aft-hf demo (an earlier aft_hf version)")
    check_output_dir(out, overwrite=True, option="--out")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "aft-hf demo")
