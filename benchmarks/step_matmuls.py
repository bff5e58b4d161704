"""The AFT step against its own matmuls: what the step costs beyond the matrix products it cannot avoid in fp32.

    python benchmarks/step_matmuls.py --model b32 --batch-size 8 --steps 10 --threads 2 --rounds 2

One step of ``aft_hf.train.aft_step`` (the trainer's step, ``AftRunner`` of ``aft_step.py``) runs under a
``TorchDispatchMode`` that records every matrix-product kernel it calls, with its shapes, strides and dtypes:
``mm``, ``addmm``, ``bmm``, ``baddbmm``, the CPU SDPA attention forward and backward, and the convolution
(forward and backward) of the patch embedding when it is one. Each distinct call is then timed alone on random
tensors of the same layout (best of ``--reps``) and weighted by how often the step makes it: their sum is the
step's **matmul time**. Rounds alternate one timed step and one replay of the matmuls (A, B, A, B), so load
changes hit both. Printed (and written with ``--json``): step time, matmul time, their ratio (1.0 = nothing
but matmuls; the goal is <= 1.10), the matmuls' achieved FLOP/s as a fraction of the large square-matmul peak
measured in the same run, and the ten costliest kernels.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import GEOMETRIES, PRECISIONS, AftRunner, StepOptions, count_flops, make_batch, matmul_peak, write_report  # noqa: E402,E501
from arguments import at_least, output_file, positive_int, refuse_fp16_on_cpu, show_defaults  # noqa: E402

aten = torch.ops.aten
MATMUL_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
              aten._scaled_dot_product_flash_attention_for_cpu.default,
              aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
              aten.convolution.default, aten.convolution_backward.default}
"""The kernels counted as the step's matrix products (attention and the patch embedding included)."""


class _Spec(tuple):
    """(shape, stride, dtype) of a tensor argument: enough to rebuild one of the same layout."""


def _spec(x):
    return _Spec((tuple(x.shape), tuple(x.stride()), x.dtype)) if isinstance(x, torch.Tensor) else x


class RecordMatmuls(TorchDispatchMode):
    """Counts each matrix-product call of the region by (op, argument layouts)."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_OPS:
            key = (func, repr((tree_map(_spec, args), tree_map(_spec, kwargs))))
            self.calls[key] += 1
            self.__dict__.setdefault("_args", {})[key] = (tree_map(_spec, args), tree_map(_spec, kwargs))
        return func(*args, **kwargs)


def _build(spec, device):
    if isinstance(spec, _Spec):
        shape, stride, dtype = spec  # filled through its storage: a broadcast (stride 0) layout shares elements
        size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
        storage = torch.empty(size, dtype=dtype, device=device)
        storage = storage.normal_(0, 0.1) if dtype.is_floating_point else storage.zero_()
        return storage.as_strided(shape, stride)
    return spec


def time_matmuls(recorder: RecordMatmuls, device: torch.device, reps: int = 3) -> dict:
    """Seconds of each recorded call alone (best of ``reps`` after one warm-up) times its count."""
    rows = []
    for key, count in recorder.calls.items():
        args, kwargs = recorder._args[key]
        args, kwargs = tree_map(lambda s: _build(s, device), args), tree_map(lambda s: _build(s, device), kwargs)
        func = key[0]
        func(*args, **kwargs)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            func(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        shapes = [tuple(a[0]) for a in recorder._args[key][0] if isinstance(a, _Spec)]
        rows.append({"op": str(func.__name__), "shapes": shapes, "count": count, "seconds_each": best,
                     "seconds": best * count})
    rows.sort(key=lambda r: -r["seconds"])
    return {"seconds": sum(r["seconds"] for r in rows), "kernels": rows}


MATMUL_NAMES = {f"aten::{op._schema.name.split('::')[1]}" for op in MATMUL_OPS}
"""The profiler's names of :data:`MATMUL_OPS` (``aten::mm``, ...)."""


def profile_step(runner, images: torch.Tensor, device: torch.device) -> list[dict]:
    """One step under ``torch.profiler``: every op's self time (seconds) and call count, costliest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step(images, torch.Generator(device=device).manual_seed(99))
    rows = [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6} for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r["self_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--steps", type=at_least(0), default=10, help="attack iterations K")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--compile", action="store_true", help="torch.compile the vision tower (perf.compile)")
    p.add_argument("--fused-adamw", default="auto", choices=["auto", "on", "off"], help="perf.fused_adamw")
    p.add_argument("--rounds", type=positive_int, default=2, help="alternating (step, matmul replay) rounds after a warm-up")
    p.add_argument("--reps", type=positive_int, default=3, help="timings of each distinct kernel (best kept)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one more step under torch.profiler: the ops by self time, matmuls in context")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", type=output_file, default=None)
    args = show_defaults(p).parse_args(argv)
    refuse_fp16_on_cpu(p, args.precision, torch.cuda.is_available())
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=PRECISIONS[args.precision])
    device = accelerator.device
    fused = {"auto": None, "on": True, "off": False}[args.fused_adamw]
    # the kernels are recorded and the FLOPs counted on an eager twin: under a dispatch mode a compiled tower
    # recompiles, and past dynamo's recompile limit it would run eager for good (the timed steps with it)
    print(f"recording the matrix products of one {args.model} step and counting its FLOPs ...", flush=True)
    probe = AftRunner(accelerator, args.model, args.steps, StepOptions(fused_adamw=fused))
    images = make_batch(args.batch_size, probe.image_size, device)
    recorder = RecordMatmuls()
    with recorder:
        probe.step(images, torch.Generator(device=device).manual_seed(1))
    flops, _ = count_flops(lambda: probe.step(images, torch.Generator(device=device).manual_seed(2)))
    if args.compile:
        probe.close()
        runner = AftRunner(accelerator, args.model, args.steps, StepOptions(compile=True, fused_adamw=fused))
    else:
        runner = probe
    t0 = time.perf_counter()
    runner.step(images, torch.Generator(device=device).manual_seed(0))  # warm-up (compiles when asked)
    print(f"warm-up step{' (with compilation)' if args.compile else ''}: {time.perf_counter() - t0:.1f} s; then "
          f"{args.rounds} round(s) of one step and one replay of its matmuls", flush=True)
    steps, replays = [], []
    for i in range(args.rounds):
        t0 = time.perf_counter()
        runner.step(images, torch.Generator(device=device).manual_seed(10 + i))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps.append(time.perf_counter() - t0)
        replays.append(time_matmuls(recorder, device, args.reps))
        print(f"  [round {i + 1}/{args.rounds}] step {steps[-1]:.3f} s, its matmuls alone {replays[-1]['seconds']:.3f} s",
              flush=True)
    peak = matmul_peak(device, torch.float32 if args.precision == "fp32" else torch.bfloat16, seconds=1.0)
    step_s = statistics.median(steps)
    matmul_s = statistics.median(r["seconds"] for r in replays)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "args": vars(args) | {"json": None}, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load": os.getloadavg(), "step_s": steps, "matmul_s": [r["seconds"] for r in replays],
              "step_over_matmul": step_s / matmul_s, "flops_per_step": flops, "peak_flops_per_s": peak["flops_per_s"],
              "step_fraction_of_peak": flops / step_s / peak["flops_per_s"],
              "matmul_fraction_of_peak": flops / matmul_s / peak["flops_per_s"],
              "kernels": replays[-1]["kernels"]}
    print(f"model {args.model}, batch {args.batch_size}, K={args.steps}, {args.precision}, "
          f"compile={'on' if args.compile else 'off'}, fused AdamW={'on' if runner.fused else 'off'}, "
          f"{report['threads']} thread(s), {args.rounds} round(s)")
    print(f"step {step_s:.3f} s, its matmuls alone {matmul_s:.3f} s: step / matmul = {report['step_over_matmul']:.3f}")
    print(f"{flops / 1e9:.1f} GFLOP per step; large-matmul peak {peak['flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"({peak['dtype']}): step at {100 * report['step_fraction_of_peak']:.1f}%, its matmuls alone at "
          f"{100 * report['matmul_fraction_of_peak']:.1f}%")
    print("costliest kernels (one replay):")
    for row in report["kernels"][:10]:
        print(f"  {row['op']:<55} x{row['count']:<4} {row['seconds']:.3f} s  {row['shapes']}")
    if args.profile:
        report["profile"] = profile_step(runner, images, device)
        total = sum(r["self_s"] for r in report["profile"])
        in_step = sum(r["self_s"] for r in report["profile"] if r["op"] in MATMUL_NAMES)
        print(f"one step under torch.profiler: {total:.2f} s of self time, matrix products {in_step:.2f} s "
              f"({100 * in_step / total:.1f}%) against {matmul_s:.2f} s replayed alone; by self time:")
        for r in report["profile"][:15]:
            print(f"  {r['op']:<55} x{r['calls']:<5} {r['self_s']:.3f} s  {100 * r['self_s'] / total:5.1f}%")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
