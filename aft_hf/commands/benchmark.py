"""``aft-hf benchmark``: the robust zero-shot benchmark (clip_benchmark / RobustVLM protocol) of one or more
models over a named suite or the user's webdataset copies.

    aft-hf benchmark --model chs20/fare2-clip --model openai/clip-vit-large-patch14 --suite robustvlm13 --out bench/
    accelerate launch -m aft_hf benchmark --model out/final --datasets clip-benchmark/wds_vtab-pcam --out bench/
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from ..benchmark.errors import BenchmarkError, BenchmarkStopped
from ..benchmark.protocol import Protocol
from ..benchmark.runner import DatasetRequest
from ..benchmark.suites import SUITES, suite_datasets
from ..env import launcher_precision
from . import DefaultsHelpFormatter

MIXED_PRECISIONS = {"no": "fp32", "bf16": "bf16"}  # --mixed-precision -> Protocol.precision


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="the robust zero-shot benchmark (clip_benchmark / RobustVLM): 13 datasets, APGD-CE + "
                          "APGD-T -> report.json/.md, figure, card entries",
        description="Zero-shot accuracy, clean (whole test split) and under APGD-CE then APGD-T (first 1000 test "
                    "images, ImageNet 5000), of one or more CLIP models over clip_benchmark webdataset copies. "
                    "Runs under `accelerate launch` (images sharded across processes) and resumes an interrupted "
                    "run in the same --out. Writes OUT/report.json, report.md, benchmark.png and, per model, "
                    "card_<model>.json for `aft-hf push --report`.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="Hub id or folder (repeat to compare models)")
    p.add_argument("--text-model", help="full CLIP checkpoint whose text tower every model uses (default: each "
                                        "full CLIP model its own; required for vision-only models)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", action="append", choices=list(SUITES),
                     help="named suite (repeatable: --suite robustvlm13 --suite imagenet1k)")
    src.add_argument("--datasets", nargs="+", metavar="ID_OR_FOLDER",
                     help="Hub ids (e.g. clip-benchmark/wds_vtab-pcam) or local folders in the clip_benchmark "
                          "webdataset layout")
    p.add_argument("--data-root", help="folder holding local copies named like the Hub repos (DIR/wds_cars, ...): "
                                       "used instead of downloading; the numbers keep the Hub id")
    p.add_argument("--split", default="test", help="split folder of the copies")
    p.add_argument("--eps", nargs="+", type=float, default=[2.0, 4.0], help="L-inf budgets in 1/255 units")
    p.add_argument("--iterations", type=int, default=100, help="APGD iterations per run")
    p.add_argument("--ce-restarts", type=int, default=5, help="APGD-CE runs (the reference's AutoAttack 'custom')")
    p.add_argument("--t-restarts", type=int, default=1, help="APGD-T runs per target class")
    p.add_argument("--targets", type=int, default=9, help="APGD-T target classes (none for 2-class datasets)")
    p.add_argument("--robust-images", type=int,
                   help="images attacked per dataset (default: the protocol's, 1000; ImageNet 5000)")
    p.add_argument("--clean-images", type=int, help="images for clean accuracy (default: the whole test split)")
    p.add_argument("--nested-eps", action="store_true",
                   help="attack each budget only on the images robust at the smaller one (cheaper; not the "
                        "protocol's)")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch (the protocol's 50)")
    p.add_argument("--mixed-precision", choices=list(MIXED_PRECISIONS),
                   help="autocast of the image encoder: bf16 (recorded; not the protocol's) or no (fp32, the "
                        "protocol's); default: accelerate's ACCELERATE_MIXED_PRECISION (accelerate launch "
                        "--mixed_precision), as for `aft-hf evaluate`, else no")
    p.add_argument("--bf16", action="store_true", help="the same as --mixed-precision bf16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each image encoder: a compilation per model first (about a minute on a small "
                        "CPU), then cheaper passes (speed only, not the protocol's business: recorded, resumable)")
    p.add_argument("--seed", type=int, default=0, help="seeds the attacks' random starts")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available (under accelerate launch, each process its own GPU)")
    p.add_argument("--out", required=True, help="output folder (a run in it is resumed)")
    p.set_defaults(func=_cli_benchmark)


def _precision(args) -> str:
    """The protocol's precision from ``--mixed-precision`` / ``--bf16``, else from the launcher's
    ``ACCELERATE_MIXED_PRECISION`` (so ``accelerate launch --mixed_precision bf16`` is not silently run in fp32)."""
    asked = args.mixed_precision
    if args.bf16:
        if asked not in (None, "bf16"):
            raise BenchmarkError(f"--bf16 and --mixed-precision {asked} contradict each other: give one of them")
        asked = "bf16"
    if asked is None:
        launcher = launcher_precision()
        if launcher not in MIXED_PRECISIONS:
            raise BenchmarkError(f"ACCELERATE_MIXED_PRECISION={launcher!r} (accelerate launch --mixed_precision?): the "
                                 f"benchmark runs in {' or '.join(MIXED_PRECISIONS)}; pass --mixed-precision to choose")
        asked = launcher
    return MIXED_PRECISIONS[asked]


def _requests(args) -> list[DatasetRequest]:
    if args.suite:
        return [DatasetRequest.from_suite(d) for d in suite_datasets(args.suite)]
    return [DatasetRequest.from_ref(ref) for ref in args.datasets]


class _Signalled(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame) -> None:
    raise _Signalled(signum)


@contextlib.contextmanager
def _stop_on_signal(out: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM (a scheduler's pre-emption) ends the run in one line saying how to resume, instead of a
    traceback or a silent exit: the batch in flight is dropped, every finished one is on disk already."""
    previous = {}
    if threading.current_thread() is threading.main_thread():  # SIGINT too: its handler may not be Python's default
        previous = {s: signal.signal(s, _raise_signalled) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt as e:
        raise BenchmarkStopped(getattr(e, "signum", signal.SIGINT), out) from None
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _cli_benchmark(args, extra) -> int:
    from ..benchmark.run import run_benchmark
    from ..outputs import check_output_folder

    check_output_folder("--out", args.out, results=True)

    protocol = Protocol(eps=tuple(args.eps), iterations=args.iterations, ce_restarts=args.ce_restarts,
                        t_restarts=args.t_restarts, targets=args.targets, robust_images=args.robust_images,
                        clean_images=args.clean_images, nested=args.nested_eps,
                        precision=_precision(args), batch_size=args.batch_size, seed=args.seed)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchmarkError("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    with _stop_on_signal(args.out):
        report = run_benchmark(args.model, _requests(args), args.out, protocol, args.text_model, args.data_root,
                               args.split, args.device, compile_encoder=args.compile)
    if report is not None and report.get("complete"):
        print(f"report: {args.out}/report.md" + ("" if report["is_protocol"] else " (not the protocol's numbers: "
                                                 + "; ".join(report["deviations"]) + ")"))
    return 0
