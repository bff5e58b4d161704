"""Interleaved A/B timing of one speed switch of the AFT step: the before/after ratio from one run.

    python benchmarks/ab_switch.py --switch patchmm --model b32 --batch-size 8 --steps 10 --rounds 4 --threads 2

``aft_step.py --ablate`` times its variants one after the other, so on a shared machine a change
in background load lands on one variant only. Here both variants are built once and their steps
alternate (A, B, A, B, ...), so slow and fast moments fall on both; the medians, their ratio, the FLOPs
each variant does, and the useful work's fraction of the dense matmul peak (the default step's FLOPs per
second of each variant, as ``aft_step.py`` credits it; peak measured in the same run) are printed and
written as JSON.
The first round is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import ABLATIONS, GEOMETRIES, AftRunner, StepOptions, count_flops, make_batch, matmul_peak, write_report  # noqa: E402
from arguments import at_least, output_file, positive_int, show_defaults  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--switch", default="patchmm", choices=[a for a in ABLATIONS if a != "compile"])
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--steps", type=at_least(0), default=10, help="attack iterations K")
    p.add_argument("--rounds", type=at_least(2), default=4, help="A/B rounds (the first is a warm-up)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", type=output_file, default=None)
    args = show_defaults(p).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    base = StepOptions()
    variants = {"default": base, f"flip {args.switch}": base.flipped(args.switch, device)}
    runners = {name: AftRunner(accelerator, args.model, args.steps, opts) for name, opts in variants.items()}
    images = make_batch(args.batch_size, GEOMETRIES[args.model]["image_size"], device)
    flops = {name: count_flops(lambda: runner.step(images, torch.Generator(device=device).manual_seed(0)))[0]
             for name, runner in runners.items()}  # each variant's own: a switch may skip work (clstoken)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(args.rounds):
        for name, runner in runners.items():
            gen = torch.Generator(device=device).manual_seed(i)
            t0 = time.perf_counter()
            runner.step(images, gen)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times[name].append(time.perf_counter() - t0)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    peak = matmul_peak(device, dtype, seconds=1.0)["flops_per_s"]
    medians = {name: statistics.median(t) for name, t in times.items()}
    report = {"switch": args.switch, "model": args.model, "batch_size": args.batch_size, "k": args.steps,
              "threads": torch.get_num_threads(), "options": {n: vars(o) for n, o in variants.items()},
              "step_s": times, "median_step_s": medians, "flops_per_step": flops, "matmul_peak_flops_per_s": peak,
              # useful work = the default step's FLOPs, as aft_step.py credits it: a variant doing more is not credited
              "fraction_of_peak": {n: flops["default"] / m / peak for n, m in medians.items()},
              "speedup_of_default": medians[f"flip {args.switch}"] / medians["default"]}
    for name, m in medians.items():
        print(f"{name:>20}: {m:.2f} s/step  {args.batch_size / m:.3f} images/s  "
              f"{flops[name] / 1e9:.1f} GFLOP/step done  useful work at "
              f"{100 * report['fraction_of_peak'][name]:.1f}% of the {peak / 1e9:.0f} GFLOP/s matmul peak "
              f"({variants[name].label()})")
    print(f"default vs flip {args.switch}: {report['speedup_of_default']:.3f}x (medians of {args.rounds - 1} "
          "interleaved steps each)")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
