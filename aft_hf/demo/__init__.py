"""``aft-hf demo``: the whole pipeline, offline, in a synthetic world where the right answer is known.

    world data -> the shipped world CLIP -> AFT (package trainer) and a noise control, several seeds
    -> maps and metrics on held-out images with target masks -> report + figures -> Hub-ready folder

The AFT runs use the package's own trainer and config format (``aft_hf/demo/world_aft.yaml``,
overridable like ``aft-hf train``); only model and data differ from the ImageNet recipes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..model import load_image_encoder
from .setup import (
    DEFAULT_CONFIG, HEADLINE, DemoOptions, Setup, fine_tune, measure_kwargs, prepare, robust_settings, threat_label,
    threat_overrides,
)

logger = logging.getLogger(__name__)
__all__ = ["DEFAULT_CONFIG", "HEADLINE", "DemoOptions", "Setup", "add_subcommand", "prepare", "run_demo",
           "threat_overrides"]


def run_demo(opts: DemoOptions) -> dict:
    """Run everything and write ``opts.out``; returns the report dict (as written to report.json)."""
    from ..hub import prepare_hub_folder
    from .measure import aft_objective, measure
    from .report import aggregate, card_report, metrics_figure, objective_table, saliency_grid, verdicts, write_report

    start = time.perf_counter()
    setup = prepare(opts)
    data, kw = setup.data, measure_kwargs(opts, opts.robust_eps)
    logger.info("measuring the original world CLIP on %d held-out images", opts.eval_images)
    original_model = load_image_encoder(setup.base_cfg.model.name_or_path)
    original = measure(original_model, data, **kw)
    threats, runs, finals, objectives = [], {}, {}, {}
    for norm in opts.norms:
        variants = [f"aft_{norm}"] + ([f"control_{norm}"] if opts.control else [])
        threats.append({"norm": norm, "aft": variants[0], "control": variants[1] if opts.control else None})
        for v in variants:
            runs[v], finals[v], objectives[v] = [], [], []
        for seed in range(opts.seeds):
            for variant in variants:
                cfg, final = fine_tune(opts, setup, norm, opts.eps, seed, variant.startswith("control"), variant)
                model = load_image_encoder(str(final))
                finals[variant].append(str(final))
                runs[variant].append(measure(model, data, seed=seed, **kw))
                objectives[variant].append(aft_objective(model, original_model, data.images, cfg.attack, seed=0))
        threats[-1]["label"] = threat_label(cfg.attack)
        threats[-1]["original_objective"] = aft_objective(original_model, original_model, data.images, cfg.attack,
                                                          seed=0)
    report = {"settings": {"base": opts.base, "train_images": opts.train_images, "train_seed": opts.train_seed,
                           "eval_images": opts.eval_images, "eval_seed": opts.eval_seed,
                           "methods": list(opts.methods), "tolerance_px": opts.tolerance_px,
                           "robust_eps": list(opts.robust_eps), **robust_settings(opts),
                           "attack": "; ".join(t["label"] for t in threats),
                           "steps": setup.base_cfg.optim.max_steps, "aft_config": setup.base_cfg.to_dict(),
                           "world": setup.world.to_dict()},
              "seeds": list(range(opts.seeds)), "variants": list(runs), "models": finals,
              "threats": [{k: v for k, v in t.items() if k != "original_objective"} for t in threats],
              **aggregate(original, runs, opts.methods)}
    report["objective"] = objective_table(threats, objectives)
    report["verdicts"] = verdicts(report)
    first = threats[0]["aft"]
    figures = {"saliency_grid": saliency_grid(data.images, data.masks, original, runs[first][0], opts.methods,
                                              setup.out / "saliency_grid.png"),
               "metrics": metrics_figure(report, setup.out / "metrics.png")}
    report["figures"] = {k: v.name for k, v in figures.items()}
    report["wall_time_s"] = time.perf_counter() - start
    report = write_report(report, setup.out)
    prepare_hub_folder(finals[first][0], setup.out / "hub_folder", repo_id=opts.repo_id,
                       report=card_report(report, runs[first][0], opts.repo_id),
                       figure=figures["saliency_grid"], overwrite=True)
    logger.info("demo finished in %.0f s: see %s and %s", report["wall_time_s"], setup.out / "report.md",
                setup.out / "saliency_grid.png")
    return report


def add_subcommand(subparsers) -> None:
    """``aft-hf demo [--norms ...] [--eps ...] [--study] [--seeds N] [--out DIR] [--section.field value ...]``."""
    p = subparsers.add_parser(
        "demo", help="the whole pipeline offline in a synthetic world with known answers",
        description="Pretrained world CLIP -> AFT of each threat model and its noise control (several seeds) -> "
                    "saliency maps and metrics against ground-truth masks -> report.md, figures, Hub-ready folder. "
                    "With --study: the dose-response study (AFT at each --eps for each norm) -> study.md, "
                    "study.json, dose_response.png. Extra --section.field value arguments override the AFT config.")
    p.add_argument("--out", default=None, help="output folder (default demo_out, or study_out with --study)")
    p.add_argument("--seeds", type=int, default=DemoOptions.seeds)
    p.add_argument("--train-images", type=int, default=DemoOptions.train_images)
    p.add_argument("--eval-images", type=int, default=DemoOptions.eval_images)
    p.add_argument("--methods", nargs="+", default=None,
                   help="saliency methods (default: saliency gradcam attention; with --study: saliency)")
    p.add_argument("--no-control", action="store_true", help="skip the noise-only control runs")
    p.add_argument("--norms", nargs="+", default=list(DemoOptions.norms), choices=list(HEADLINE),
                   help="threat models to fine-tune with (default: linf huber)")
    p.add_argument("--eps", nargs="+", type=float, default=None,
                   help="trained budget(s) in 1/255 (huber: eps = eps2); default: linf 4, huber 1 + 1 "
                        "(the demo takes one value; --study default: 1 2 4 8)")
    p.add_argument("--study", action="store_true", help="run the dose-response study over --eps instead")
    p.add_argument("--robust-attack", choices=["apgd", "pgd"], default=DemoOptions.robust_attack,
                   help="L-inf attack for robust accuracy (default apgd: APGD-CE + APGD-T)")
    p.add_argument("--robust-steps", type=int, default=DemoOptions.robust_steps,
                   help="iterations of the robust-accuracy attack")
    p.add_argument("--repo-id", default=DemoOptions.repo_id, help="repo id written into the Hub-ready card")
    p.add_argument("--config", help=f"AFT config (default: {DEFAULT_CONFIG.name} shipped with the package)")
    p.add_argument("--base", default=DemoOptions.base, help="world CLIP folder (default: the shipped one)")
    p.set_defaults(func=_cli_demo, accepts_overrides=True)


def _cli_demo(args, overrides: list[str]) -> int:
    from ..config import ConfigError

    if args.seeds < 1 or args.train_images < 1 or args.eval_images < 1 or args.robust_steps < 1:
        raise ConfigError(["--seeds, --train-images, --eval-images and --robust-steps must be >= 1"])
    if args.eps and any(e <= 0 for e in args.eps):
        raise ConfigError([f"--eps must be > 0 (1/255 units), got {args.eps}"])
    if not args.study and args.eps and len(args.eps) > 1:
        raise ConfigError(["the demo trains one budget: give one --eps value, or add --study for several"])
    methods = tuple(args.methods) if args.methods else (("saliency",) if args.study else DemoOptions.methods)
    opts = DemoOptions(out=args.out or ("study_out" if args.study else DemoOptions.out), seeds=args.seeds,
                       train_images=args.train_images, eval_images=args.eval_images, methods=methods,
                       control=not args.no_control, robust_steps=args.robust_steps, repo_id=args.repo_id,
                       config=args.config, base=args.base, overrides=overrides, norms=tuple(args.norms),
                       eps=None if args.study or not args.eps else args.eps[0], robust_attack=args.robust_attack)
    if args.study:
        from .study import run_study

        study = run_study(opts, args.eps or [1, 2, 4, 8])
        print((Path(opts.out) / "study.md").read_text())
        print(f"wall time {study['wall_time_s']:.0f} s; figure: {Path(opts.out) / 'dose_response.png'}")
        return 0
    report = run_demo(opts)
    print((Path(opts.out) / "report.md").read_text())
    print(f"wall time {report['wall_time_s']:.0f} s; figures: {Path(opts.out) / 'saliency_grid.png'}, "
          f"{Path(opts.out) / 'metrics.png'}")
    return 0
