"""End-to-end overhead of ``aft-hf train`` over its bare AFT step: data loading, logging, checkpoints.

    python benchmarks/end_to_end.py --model b32 --batch-size 8 --attack-steps 2 --steps 3,9 --json e2e.json

The bare step is ``aft_hf.train.aft_step`` on an in-memory batch (as ``benchmarks/aft_step.py``
times it). The end-to-end cost is the *marginal* wall time per optimiser step of the real
``aft_hf.train.train`` on an imagefolder of ImageNet-sized JPEGs: two runs of N1 and N2 steps,
(T2 - T1) / (N2 - N1), so that start-up, model loading and the final export cancel out while
per-step data loading, logging (every ``--log-every`` steps), tensorboard writes and checkpoints
(every ``--checkpointing-steps``) are counted. Overhead = 1 - bare step time / marginal time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import GEOMETRIES, AftRunner, StepOptions, build_encoder, make_batch, write_report  # noqa: E402
from arguments import at_least, output_file, positive_int, show_defaults  # noqa: E402
from data_pipeline import write_jpegs  # noqa: E402


def save_model(model: str, folder: Path) -> Path:
    """The random-weight geometry saved as a vision-with-projection folder with its image processor."""
    try:  # the PIL processor: CLIPImageProcessor falls back to it with a warning when torchvision is missing
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    encoder = build_encoder(model, "sdpa")
    encoder.vision.save_pretrained(folder)
    size = GEOMETRIES[model]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def bare_step_seconds(model: str, batch_size: int, k: int, repeats: int) -> float:
    """Median seconds of the trainer's step on a fixed in-memory batch (after one warm-up step)."""
    from accelerate import Accelerator

    runner = AftRunner(Accelerator(cpu=not torch.cuda.is_available()), model, k, StepOptions())
    images = make_batch(batch_size, runner.image_size, runner.accelerator.device)
    times = []
    for i in range(repeats + 1):
        gen = torch.Generator(device=images.device).manual_seed(i)
        t0 = time.perf_counter()
        runner.step(images, gen)
        times.append(time.perf_counter() - t0)
    runner.close()
    return statistics.median(times[1:])


def train_seconds(model_dir: Path, data_dir: Path, out: Path, args, steps: int) -> float:
    """Wall seconds of one ``train()`` run of ``steps`` optimiser steps."""
    from aft_hf.config import load_config
    from aft_hf.train import train

    cfg = load_config(None, [
        "--model.name_or_path", str(model_dir), "--data.dataset", str(data_dir), "--output_dir", str(out),
        "--optim.batch_size", str(args.batch_size), "--max_steps", str(steps), "--warmup_steps", "0",
        "--attack.steps", str(args.attack_steps), "--log_every", str(args.log_every),
        "--checkpointing_steps", str(args.checkpointing_steps), "--data.num_workers", str(args.workers),
        "--logging.report_to", args.report_to, "--model.output_normalize", "true"])
    t0 = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--attack-steps", type=positive_int, default=2, help="attack iterations K")
    p.add_argument("--steps", default="3,9", help="N1,N2 optimiser steps of the two train() runs")
    p.add_argument("--log-every", type=positive_int, default=1)
    p.add_argument("--checkpointing-steps", type=positive_int, default=3)
    p.add_argument("--workers", type=at_least(0), default=1, help="data.num_workers")
    p.add_argument("--report-to", default="tensorboard")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed bare steps")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", type=output_file, default=None)
    return show_defaults(p).parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n1, n2 = (int(s) for s in args.steps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = save_model(args.model, root / "model")
        write_jpegs(root / "jpegs", max(n2 * args.batch_size + args.batch_size, 32), bad_fraction=0.01)
        bare = bare_step_seconds(args.model, args.batch_size, args.attack_steps, args.repeats)
        t1 = train_seconds(model_dir, root / "jpegs", root / "run1", args, n1)
        t2 = train_seconds(model_dir, root / "jpegs", root / "run2", args, n2)
    marginal = (t2 - t1) / (n2 - n1)
    report = {"model": args.model, "batch_size": args.batch_size, "attack_steps": args.attack_steps,
              "log_every": args.log_every, "checkpointing_steps": args.checkpointing_steps,
              "num_workers": args.workers, "report_to": args.report_to, "bare_step_s": bare,
              "train_runs": {str(n1): t1, str(n2): t2}, "marginal_step_s": marginal,
              "overhead": 1 - bare / marginal, "threads": torch.get_num_threads()}
    print(f"bare AFT step: {bare:.3f} s;  train(): {n1} steps {t1:.1f} s, {n2} steps {t2:.1f} s "
          f"-> {marginal:.3f} s per step;  overhead {100 * report['overhead']:.1f}% "
          f"(data workers {args.workers}, log every {args.log_every}, checkpoint every {args.checkpointing_steps})")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
