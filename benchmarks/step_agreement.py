"""Does ``aft_step.py`` time what the trainer runs? Its step time against ``aft_hf.train.aft_step`` in a plain loop.

    python benchmarks/step_agreement.py --model b32 --batch-size 8 --steps 10 --threads 2 --rounds 2

Each sample is a fresh process (so no process state, such as glibc's allocator settings, leaks from one
variant into another), and the processes alternate (A, B, A, B, ...) so a shared machine's load hits both:

- ``benchmark``: ``aft_step.py`` itself (its ``run``, without the reference loop): its reported median step;
- ``plain``: the same ``AftRunner`` objects (same geometry, threads and switches) and ``aft_hf.train.aft_step``
  called directly in a plain ``for`` loop, no timings dict, no memory probes;
- ``plain+mmap`` (``--diagnose``): the plain loop after ``mallopt(M_MMAP_THRESHOLD, 256 KiB)``, the allocator
  setting ``aft_step.py`` used to make for its RSS measurements, in force during its timed steps.

The ratio benchmark / plain should be within 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arguments import output_file, positive_int, show_defaults  # noqa: E402


def plain_loop(model: str, batch_size: int, k: int, threads: int, repeats: int, mmap_threshold: bool) -> list[float]:
    """Seconds per step of ``aft_hf.train.aft_step`` called directly (after one warm-up step)."""
    import torch
    from accelerate import Accelerator
    from aft_step import GEOMETRIES, AftRunner, StepOptions, make_batch

    from aft_hf.train import aft_step

    if mmap_threshold:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD, as the old Memory() set it
    torch.set_num_threads(threads)
    accelerator = Accelerator(cpu=True)
    r = AftRunner(accelerator, model, k, StepOptions())
    images = make_batch(batch_size, GEOMETRIES[model]["image_size"], accelerator.device)
    times = []
    for i in range(repeats + 1):
        gen = torch.Generator().manual_seed(1000 + i)
        t0 = time.perf_counter()
        aft_step(accelerator, r.model, r.unwrapped, r.frozen, r.attacker, r.optimizer, r.scheduler, images, gen,
                 r.max_grad_norm)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def benchmark_run(model: str, batch_size: int, k: int, threads: int, repeats: int) -> list[float]:
    """The step times ``aft_step.py`` reports for its optimised variant (reference loop skipped)."""
    from aft_step import parse_args, run

    args = parse_args(["--model", model, "--batch-size", str(batch_size), "--steps", str(k), "--threads",
                       str(threads), "--repeats", str(repeats), "--warmup", "1", "--no-reference",
                       "--peak-seconds", "0.3"])
    return run(args)["variants"][0]["step_s"]


def _child(argv: list[str]) -> None:
    variant, model, batch, k, threads, repeats = argv[0], argv[1], *map(int, argv[2:6])
    if variant == "benchmark":
        times = benchmark_run(model, batch, k, threads, repeats)
    else:
        times = plain_loop(model, batch, k, threads, repeats, mmap_threshold=variant == "plain+mmap")
    print("RESULT " + json.dumps(times))


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    from aft_step import GEOMETRIES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="b32", choices=list(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=10, help="attack iterations K")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=2, help="timed steps per process")
    p.add_argument("--rounds", type=positive_int, default=2, help="processes per variant, alternating")
    p.add_argument("--diagnose", action="store_true", help="add the plain loop under the old allocator setting")
    p.add_argument("--json", type=output_file, default=None)
    args = show_defaults(p).parse_args(argv)
    variants = ["benchmark", "plain"] + (["plain+mmap"] if args.diagnose else [])
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, __file__, "--child", v, args.model, str(args.batch_size), str(args.steps),
                   str(args.threads), str(args.repeats)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:  # say why in one line (the child's last error line), not a CalledProcessError
                why = next((line for line in reversed(run.stderr.splitlines()) if line.strip()), "no output")
                raise SystemExit(f"step_agreement: the {v} process (round {r + 1}) failed (exit {run.returncode}): {why}")
            samples[v] += json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
            print(f"  [round {r + 1}/{args.rounds}] {v}: " + ", ".join(f"{t:.2f}" for t in samples[v][-args.repeats:])
                  + " s/step", flush=True)
    med = {v: statistics.median(s) for v, s in samples.items()}
    print(f"model {args.model}, batch {args.batch_size}, K={args.steps}, {args.threads} thread(s), "
          f"{args.rounds} process(es) x {args.repeats} step(s) per variant, alternating:")
    for v in variants:
        print(f"  {v:>11}: median {med[v]:.3f} s/step  ratio to plain {med[v] / med['plain']:.3f}  "
              f"samples {', '.join(f'{t:.2f}' for t in samples[v])}")
    ok = abs(med["benchmark"] / med["plain"] - 1) <= 0.10
    print(f"benchmark within 10% of the plain loop: {'yes' if ok else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "samples": samples, "median": med,
                                         "within_10_percent": ok}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
