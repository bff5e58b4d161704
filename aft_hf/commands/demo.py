"""``aft-hf demo``: the whole pipeline, offline, in the synthetic world (see :mod:`aft_hf.demo`)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..demo import DEFAULT_CONFIG, HEADLINE, DemoOptions, run_demo
from ..demo.plan import check_overrides
from ..demo.roar import WorldRoar
from ..objectives import available_objectives
from ..threat_models import robust_budget_problems

NOT_OPTIONS = ("command", "func", "accepts_overrides")


def add_subcommand(subparsers) -> None:
    """``aft-hf demo [--norms ...] [--eps ...] [--study] [--seeds N] [--out DIR] [--section.field value ...]``."""
    p = subparsers.add_parser(  # no abbreviations: '--seed 2' must not quietly become '--seeds 2'
        "demo", allow_abbrev=False, help="the whole pipeline offline in a synthetic world with known answers",
        description="Pretrained world CLIP -> AFT of each threat model and its noise control (several seeds) -> "
                    "saliency maps and metrics against ground-truth masks -> report.md, figures, Hub-ready folder. "
                    "With --study: the dose-response study (AFT at each --eps for each norm) -> study.md, "
                    "study.json, dose_response.png. Extra --section.field value arguments override the AFT config.")
    p.add_argument("--out", default=None, help="output folder (default demo_out, or study_out with --study)")
    p.add_argument("--seeds", type=int, default=DemoOptions.seeds,
                   help=f"training seeds per fine-tune (runs 0 .. N-1; default {DemoOptions.seeds}); the tables show "
                        "the mean and sd over seeds")
    p.add_argument("--train-images", type=int, default=DemoOptions.train_images,
                   help=f"world images written for training (default {DemoOptions.train_images})")
    p.add_argument("--eval-images", type=int, default=DemoOptions.eval_images,
                   help=f"held-out world images (with target masks) that every model is measured on "
                        f"(default {DemoOptions.eval_images})")
    p.add_argument("--methods", nargs="+", default=None,
                   help="saliency methods (default: saliency gradcam attention; with --study: saliency)")
    p.add_argument("--no-control", action="store_true", help="skip the noise-only control runs")
    p.add_argument("--norms", nargs="+", default=list(DemoOptions.norms), choices=list(HEADLINE),
                   help=f"threat models to fine-tune with (default: {' '.join(DemoOptions.norms)})")
    p.add_argument("--eps", nargs="+", type=float, default=None,
                   help="trained budget(s) in 1/255 (a norm with eps2: eps = eps2); default: " + ", ".join(
                       f"{n} {e:g}" + (f" + {e2:g}" if e2 is not None else "") for n, (e, e2) in HEADLINE.items())
                   + " (the demo takes one value; --study default: 1 2 4 8)")
    p.add_argument("--objectives", nargs="+", default=list(DemoOptions.objectives), choices=available_objectives(),
                   help="training objectives, one arm each per threat model: embedding (AFT, always run) and e.g. "
                        "tecoa (supervised, on the world's labels; docs/tecoa.md), an arm tecoa_<norm>")
    p.add_argument("--study", action="store_true", help="run the dose-response study over --eps instead")
    p.add_argument("--robust-attack", choices=["apgd", "pgd"], default=DemoOptions.robust_attack,
                   help="L-inf attack for robust accuracy (default apgd: APGD-CE + APGD-T)")
    p.add_argument("--robust-steps", type=int, default=DemoOptions.robust_steps,
                   help="iterations of the robust-accuracy attack")
    p.add_argument("--roar", action="store_true",
                   help="add ROAR (remove and retrain) of the original and each AFT model on fresh world images: "
                        "a from-scratch CNN evaluator, its accuracy on intact images beside the curves, flagged "
                        "below 0.8 (10-15 extra minutes on one shared core; not with --study)")
    p.add_argument("--roar-train-images", type=int, default=WorldRoar.train_images,
                   help=f"--roar: world images rendered to train the evaluator (default {WorldRoar.train_images})")
    p.add_argument("--roar-test-images", type=int, default=WorldRoar.test_images,
                   help=f"--roar: world images it is tested on (default {WorldRoar.test_images})")
    p.add_argument("--roar-repeats", type=int, default=None,
                   help="--roar: evaluators retrained per point with different seeds (default 2)")
    p.add_argument("--roar-fractions", nargs="+", type=float, default=None,
                   help="--roar: fractions of the pixels removed (default 0.1 0.3 0.5)")
    p.add_argument("--roar-floor", type=float, default=None,
                   help="--roar: minimum evaluator accuracy on intact images for ROAR to count as a result "
                        "(default 0.8)")
    p.add_argument("--repo-id", default=DemoOptions.repo_id, help="repo id written into the Hub-ready card")
    p.add_argument("--config", help=f"AFT config (default: {DEFAULT_CONFIG.name} shipped with the package)")
    p.add_argument("--base", default=DemoOptions.base, help="world CLIP folder (default: the shipped one)")
    p.set_defaults(func=_cli_demo, accepts_overrides=True)


def _cli_demo(args, overrides: list[str]) -> int:
    check_overrides(overrides, [f"--{k.replace('_', '-')}" for k in vars(args) if k not in NOT_OPTIONS])
    if args.seeds < 1 or args.train_images < 1 or args.eval_images < 1 or args.robust_steps < 1:
        raise ConfigError(["--seeds, --train-images, --eval-images and --robust-steps must be >= 1"])
    if args.eps and any(e <= 0 for e in args.eps):
        raise ConfigError([f"--eps must be > 0 (1/255 units), got {args.eps}"])
    if args.eps and (problems := robust_budget_problems(args.eps)):
        raise ConfigError([f"--eps: {problem}" for problem in problems])
    if args.study and args.roar:
        raise ConfigError(["--roar runs with the demo, not with --study (the study has one model per budget)"])
    if args.roar_train_images < 1 or args.roar_test_images < 1:
        raise ConfigError(["--roar-train-images and --roar-test-images must be >= 1"])
    if "embedding" not in args.objectives or (args.study and args.objectives != ["embedding"]):
        raise ConfigError(["--objectives: the demo compares other objectives with AFT, so it must include embedding "
                           "(and the --study runs embedding only)"])
    if not args.study and args.eps and len(args.eps) > 1:
        raise ConfigError(["the demo trains one budget: give one --eps value, or add --study for several"])
    methods = tuple(args.methods) if args.methods else (("saliency",) if args.study else DemoOptions.methods)
    opts = DemoOptions(out=args.out or ("study_out" if args.study else DemoOptions.out), seeds=args.seeds,
                       train_images=args.train_images, eval_images=args.eval_images, methods=methods,
                       control=not args.no_control, robust_steps=args.robust_steps, repo_id=args.repo_id,
                       config=args.config, base=args.base, overrides=overrides, norms=tuple(args.norms),
                       eps=None if args.study or not args.eps else args.eps[0], robust_attack=args.robust_attack,
                       roar=_roar_settings(args) if args.roar else None,
                       objectives=tuple(dict.fromkeys(args.objectives)))
    if args.study:
        from ..demo.study import run_study

        study = run_study(opts, args.eps or [1, 2, 4, 8])
        print((Path(opts.out) / "study.md").read_text())
        print(f"wall time {study['wall_time_s']:.0f} s; figure: {Path(opts.out) / 'dose_response.png'}")
        return 0
    report = run_demo(opts)
    print((Path(opts.out) / "report.md").read_text())
    print(f"wall time {report['wall_time_s']:.0f} s; figures: {Path(opts.out) / 'saliency_grid.png'}, "
          f"{Path(opts.out) / 'metrics.png'}" + (f", {Path(opts.out) / 'roar.png'}" if "roar" in report else ""))
    return 0


def _roar_settings(args) -> WorldRoar:
    """``--roar-*`` -> :class:`WorldRoar` (its options validated: a bad fraction or repeat count is one line)."""
    from dataclasses import replace

    from ..evaluate.errors import EvaluationError

    base = WorldRoar()
    changes = {k: v for k, v in (("repeats", args.roar_repeats), ("fractions", args.roar_fractions),
                                 ("floor", args.roar_floor)) if v is not None}
    try:
        options = replace(base.options, **changes)
    except EvaluationError as e:
        raise ConfigError([f"--roar: {e}"]) from None
    return replace(base, train_images=args.roar_train_images, test_images=args.roar_test_images, options=options)
