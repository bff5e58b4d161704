"""``aft-hf demo``: the whole pipeline, offline, in a synthetic world where the right answer is known.

    world data -> the shipped world CLIP -> AFT (package trainer) and a noise control, several seeds
    -> maps and metrics on held-out images with target masks -> report + figures -> Hub-ready folder

The AFT runs use the package's own trainer and config format (``aft_hf/demo/world_aft.yaml``,
overridable like ``aft-hf train``); only model and data differ from the ImageNet recipes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import load_config
from ..model import load_image_encoder

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "world_aft.yaml"


@dataclass
class DemoOptions:
    """What the demo runs; the defaults take about 6 minutes on 2 CPU cores."""

    out: str = "demo_out"
    seeds: int = 3
    train_images: int = 1024
    eval_images: int = 128
    methods: Sequence[str] = ("saliency", "gradcam", "attention")
    control: bool = True
    tolerance_px: int = 3
    robust_eps: Sequence[float] = (1, 2, 4)
    robust_steps: int = 10
    train_seed: int = 1000
    eval_seed: int = 2000
    repo_id: str = "your-name/world-clip-aft"
    base: str = "builtin:world-clip"
    """The world CLIP to fine-tune (a folder written by `aft-hf world pretrain`, or the shipped one)."""
    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    progress: bool = True


def _eval_set(n: int, seed: int, world, text_path: str):
    from ..explain import load_text_tower
    from ..world import generate_arrays
    from .measure import EvalSet

    arrays = generate_arrays(n, seed, world)
    images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255
    masks = torch.from_numpy(arrays["masks"]).unsqueeze(1).float()
    labels = torch.from_numpy(arrays["labels"])
    text = load_text_tower(text_path)
    weights = text.class_embeddings(world.class_names, ["a photo of a {}"])
    return EvalSet(images, masks, labels, weights, text.logit_scale)


def run_demo(opts: DemoOptions) -> dict:
    """Run everything and write ``opts.out``; returns the report dict (as written to report.json)."""
    from ..hub import prepare_hub_folder
    from ..train import train
    from ..model import resolve_builtin_model
    from ..world import load_world_config, write_imagefolder
    from .measure import measure
    from .report import aggregate, card_report, metrics_figure, saliency_grid, verdicts, write_report

    start = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_builtin_model(opts.base)
    world = load_world_config(base).world
    overrides = ["--model.name_or_path", opts.base] + list(opts.overrides)  # the name, not a local path
    base_cfg = load_config(opts.config or DEFAULT_CONFIG, overrides)  # validated before any work

    train_dir = out / "data" / f"world_train_seed{opts.train_seed}_n{opts.train_images}"
    if not (train_dir / "world.json").is_file():
        write_imagefolder(train_dir, opts.train_images, opts.train_seed, world)
    data = _eval_set(opts.eval_images, opts.eval_seed, world, base)
    kw = dict(methods=opts.methods, tolerance=opts.tolerance_px, robust_eps=opts.robust_eps,
              robust_steps=opts.robust_steps, progress=opts.progress)

    logger.info("measuring the original world CLIP on %d held-out images", opts.eval_images)
    original = measure(load_image_encoder(base_cfg.model.name_or_path), data, **kw)
    variants = ["aft"] + (["control"] if opts.control else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    finals: dict[str, list[str]] = {v: [] for v in variants}
    for seed in range(opts.seeds):
        for variant in variants:
            extra = ["--data.dataset", "imagefolder", "--data.data_dir", str(train_dir), "--seed", str(seed),
                     "--output_dir", str(out / "runs" / f"{variant}_seed{seed}"),
                     "--checkpoint.overwrite_output_dir", "true"]  # a rerun of the demo replaces its runs
            if variant == "control":
                extra += ["--attack.mode", "noise"]
            cfg = load_config(opts.config or DEFAULT_CONFIG, overrides + extra)
            logger.info("%s, seed %d: %d steps", variant, seed, cfg.optim.max_steps)
            final = train(cfg)
            finals[variant].append(str(final))
            runs[variant].append(measure(load_image_encoder(str(final)), data, seed=seed, **kw))

    report = {"settings": {"base": opts.base, "train_images": opts.train_images, "train_seed": opts.train_seed,
                           "eval_images": opts.eval_images, "eval_seed": opts.eval_seed,
                           "methods": list(opts.methods), "tolerance_px": opts.tolerance_px,
                           "robust_eps": list(opts.robust_eps), "robust_steps": opts.robust_steps,
                           "attack": f"{base_cfg.attack.norm} eps {base_cfg.attack.eps:g}/255",
                           "steps": base_cfg.optim.max_steps, "aft_config": base_cfg.to_dict(),
                           "world": world.to_dict()},
              "seeds": list(range(opts.seeds)), "variants": variants, "models": finals,
              **aggregate(original, runs, opts.methods)}
    report["verdicts"] = verdicts(report)
    figures = {"saliency_grid": saliency_grid(data.images, data.masks, original, runs["aft"][0], opts.methods,
                                              out / "saliency_grid.png"),
               "metrics": metrics_figure(report, out / "metrics.png")}
    report["figures"] = {k: v.name for k, v in figures.items()}
    report["wall_time_s"] = time.perf_counter() - start
    report = write_report(report, out)
    prepare_hub_folder(finals["aft"][0], out / "hub_folder", repo_id=opts.repo_id,
                       report=card_report(report, runs["aft"][0], opts.repo_id),
                       figure=figures["saliency_grid"], overwrite=True)
    logger.info("demo finished in %.0f s: see %s and %s", report["wall_time_s"], out / "report.md",
                out / "saliency_grid.png")
    return report
