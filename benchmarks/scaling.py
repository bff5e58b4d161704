"""How the cost of the AFT step grows: time per step vs K, vs batch size, and 1 vs 2 processes.

    python benchmarks/scaling.py --model b32 --batch-size 4 --ks 1,2,5,10 --batch-sizes 1,2,4,8 \
        --processes 1,2 --json scaling.json

* K sweep (batch fixed): a step costs about (K+1) forwards + K input-gradient backwards + one
  full backward, so time should be a + b*K; the fit (a, b, R^2) is printed.
* batch sweep (K fixed): time should grow linearly with the batch (R^2 of t = a + b*B).
* processes: the same global batch under ``accelerate launch`` with 1 process and with 2 CPU
  ranks (``--multi_gpu --num_processes 2`` + ``ACCELERATE_USE_CPU=1``: DDP over gloo), the
  threads split between them. Each rank runs the trainer's own ``aft_step``.

Every point runs the trainer's step (``aft_hf.train.aft_step``) on a random-weight model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import GEOMETRIES, AftRunner, StepOptions, make_batch  # noqa: E402
from arguments import output_file, positive_int, show_defaults  # noqa: E402

HERE = Path(__file__).resolve()


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got '{text}'") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares t = a + b*x with its R^2 (1.0 = perfectly linear)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return {"a": my, "b": 0.0, "r2": 1.0}
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"a": a, "b": b, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def time_steps(runner: AftRunner, images: torch.Tensor, repeats: int, warmup: int = 1,
               barrier=None) -> list[float]:
    """Seconds of each of ``repeats`` steps after ``warmup`` untimed ones."""
    gen = torch.Generator(device=images.device)
    times = []
    for i in range(warmup + repeats):
        gen.manual_seed(i)
        if barrier:
            barrier()
        t0 = time.perf_counter()
        runner.step(images, gen, {})  # the timings dict makes the step synchronise the device
        if barrier:
            barrier()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def sweep(accelerator, model: str, points: list[tuple[int, int]], repeats: int, desc: str) -> list[dict]:
    """Median step time at each (K, batch) point."""
    from tqdm.auto import tqdm

    rows = []
    for k, batch in tqdm(points, desc=desc, unit="point"):
        runner = AftRunner(accelerator, model, k, StepOptions())
        images = make_batch(batch, runner.image_size, accelerator.device)
        times = time_steps(runner, images, repeats)
        runner.close()
        median = statistics.median(times)
        rows.append({"K": k, "batch_size": batch, "step_s": times, "step_s_median": median,
                     "images_per_s": batch / median})
    return rows


# --------------------------------------------------------------------------- multi-process


def worker(args: argparse.Namespace) -> int:
    """One rank of the process comparison (started by ``accelerate launch``)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    n = accelerator.num_processes
    if args.batch_size % n:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {n} processes")
    runner = AftRunner(accelerator, args.model, args.k, StepOptions(), seed=0)
    images = make_batch(args.batch_size // n, runner.image_size, accelerator.device, seed=accelerator.process_index)
    times = time_steps(runner, images, args.repeats, barrier=accelerator.wait_for_everyone)
    if accelerator.is_main_process:
        median = statistics.median(times)
        Path(args.worker_out).write_text(json.dumps({
            "processes": n, "distributed_type": str(accelerator.distributed_type),
            "threads_per_process": torch.get_num_threads(), "global_batch": args.batch_size,
            "step_s": times, "step_s_median": median, "images_per_s": args.batch_size / median}))
    accelerator.wait_for_everyone()
    return 0


def launch(processes: int, args: argparse.Namespace, threads_total: int) -> dict:
    """Run :func:`worker` under ``accelerate launch`` with ``processes`` CPU ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        threads = max(1, threads_total // processes)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", str(threads)]
        cmd += ["--multi_gpu", "--main_process_port", "0"] if processes > 1 else ["--cpu"]
        cmd += [str(HERE), "--worker", "--worker-out", str(out), "--model", args.model,
                "--batch-size", str(args.process_batch_size), "--k", str(args.process_k),
                "--repeats", str(args.repeats)]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode or not out.is_file():
            raise RuntimeError(f"accelerate launch with {processes} processes failed "
                               f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
        result["wall_s_including_launch"] = time.perf_counter() - t0
        return result


# --------------------------------------------------------------------------- main


def _sweep_table(rows: list, fit: dict, key: str, column: str, symbol: str, title: str) -> list[str]:
    """Markdown lines of one sweep: measured step time, images/s and the linear fit's prediction."""
    lines = ["", f"{title}: fit t = {fit['a']:.3f} + {fit['b']:.3f}*{symbol} s, R^2 = {fit['r2']:.4f}",
             f"| {column} | step s | images/s | fit s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[key]} | {r['step_s_median']:.3f} | {r['images_per_s']:.2f} | "
                     f"{fit['a'] + fit['b'] * r[key]:.3f} |")
    return lines


def format_tables(report: dict) -> str:
    lines = [f"scaling: model={report['model']} threads={report['threads']} load before/after: "
             f"{report['load_before']} / {report['load_after']}"]
    if report.get("k_sweep"):
        lines += _sweep_table(report["k_sweep"], report["k_fit"], "K", "K", "K",
                              f"time per step vs K (batch {report['batch_size']})")
    if report.get("batch_sweep"):
        lines += _sweep_table(report["batch_sweep"], report["batch_fit"], "batch_size", "batch", "B",
                              f"time per step vs batch (K {report['batch_k']})")
    if report.get("processes"):
        lines += ["", f"processes under accelerate launch (global batch {report['process_batch_size']}, "
                  f"K {report['process_k']}):",
                  "| processes | threads each | distributed | step s | images/s | speed-up |", "|---|---|---|---|---|---|"]
        base = report["processes"][0]["images_per_s"]
        for r in report["processes"]:
            lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['distributed_type']} | "
                         f"{r['step_s_median']:.3f} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x |")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=4, help="batch of the K sweep")
    p.add_argument("--ks", type=_ints, default=[1, 2, 5, 10], help="K values of the K sweep")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8], help="batch sizes of the batch sweep")
    p.add_argument("--batch-k", type=positive_int, default=2, help="K of the batch sweep")
    p.add_argument("--processes", type=_ints, default=[1, 2], help="process counts to compare")
    p.add_argument("--process-batch-size", type=positive_int, default=8, help="global batch of the process comparison")
    p.add_argument("--process-k", type=positive_int, default=2, help="K of the process comparison")
    p.add_argument("--skip", default="", help="comma list of sections to skip: k,batch,processes")
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--threads", type=positive_int, default=None, help="total CPU threads (default: torch's choice)")
    p.add_argument("--json", type=output_file, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--k", type=positive_int, default=2, help=argparse.SUPPRESS)
    args = show_defaults(p).parse_args(argv)
    if args.repeats <= 0 or args.batch_size <= 0 or args.process_batch_size <= 0 or 0 in args.batch_sizes:
        p.error("--repeats, --batch-size, --batch-sizes and --process-batch-size must be > 0")
    if 0 in args.processes:
        p.error("--processes must be > 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    from accelerate import Accelerator

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"k", "batch", "processes"}
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {sorted(unknown)} (choose from k, batch, processes)")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    report: dict = {"model": args.model, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                    "batch_k": args.batch_k, "process_batch_size": args.process_batch_size,
                    "process_k": args.process_k, "repeats": args.repeats,
                    "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if "k" not in skip:
        rows = sweep(accelerator, args.model, [(k, args.batch_size) for k in args.ks], args.repeats, "K sweep")
        report["k_sweep"] = rows
        report["k_fit"] = linear_fit([r["K"] for r in rows], [r["step_s_median"] for r in rows])
    if "batch" not in skip:
        rows = sweep(accelerator, args.model, [(args.batch_k, b) for b in args.batch_sizes], args.repeats, "batch sweep")
        report["batch_sweep"] = rows
        report["batch_fit"] = linear_fit([r["batch_size"] for r in rows], [r["step_s_median"] for r in rows])
    if "processes" not in skip and accelerator.device.type == "cpu":
        report["processes"] = [launch(n, args, report["threads"]) for n in args.processes]
    report["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(format_tables(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
