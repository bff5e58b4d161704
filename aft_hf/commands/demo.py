"""``aft-hf demo``: the whole pipeline, offline, in the synthetic world (see :mod:`aft_hf.demo`)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..demo import DEFAULT_CONFIG, DemoOptions, run_demo


def add_subcommand(subparsers) -> None:
    """``aft-hf demo [--seeds N] [--out DIR] [--section.field value ...]``."""
    p = subparsers.add_parser(
        "demo", help="the whole pipeline offline in a synthetic world with known answers",
        description="Pretrained world CLIP -> AFT and a noise control (several seeds) -> saliency maps and "
                    "metrics against ground-truth masks -> report.md, figures, Hub-ready folder. Extra "
                    "--section.field value arguments override the AFT config (e.g. --attack.norm huber "
                    "--attack.eps2 1).")
    p.add_argument("--out", default=DemoOptions.out)
    p.add_argument("--seeds", type=int, default=DemoOptions.seeds)
    p.add_argument("--train-images", type=int, default=DemoOptions.train_images)
    p.add_argument("--eval-images", type=int, default=DemoOptions.eval_images)
    p.add_argument("--methods", nargs="+", default=list(DemoOptions.methods))
    p.add_argument("--no-control", action="store_true", help="skip the noise-only control runs")
    p.add_argument("--robust-steps", type=int, default=DemoOptions.robust_steps)
    p.add_argument("--repo-id", default=DemoOptions.repo_id, help="repo id written into the Hub-ready card")
    p.add_argument("--config", help=f"AFT config (default: {DEFAULT_CONFIG.name} shipped with the package)")
    p.add_argument("--base", default=DemoOptions.base, help="world CLIP folder (default: the shipped one)")
    p.set_defaults(func=_cli_demo, accepts_overrides=True)


def _cli_demo(args, overrides: list[str]) -> int:
    if args.seeds < 1 or args.train_images < 1 or args.eval_images < 1:
        raise ConfigError(["--seeds, --train-images and --eval-images must be >= 1"])
    opts = DemoOptions(out=args.out, seeds=args.seeds, train_images=args.train_images,
                       eval_images=args.eval_images, methods=tuple(args.methods), control=not args.no_control,
                       robust_steps=args.robust_steps, repo_id=args.repo_id, config=args.config, base=args.base,
                       overrides=overrides)
    report = run_demo(opts)
    print((Path(opts.out) / "report.md").read_text())
    print(f"wall time {report['wall_time_s']:.0f} s; figures: {Path(opts.out) / 'saliency_grid.png'}, "
          f"{Path(opts.out) / 'metrics.png'}")
    return 0
