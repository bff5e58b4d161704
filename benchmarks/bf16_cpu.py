"""bf16 autocast against fp32 on this CPU: the ViT forward + backward that the AFT step and APGD repeat.

    python benchmarks/bf16_cpu.py --model b32 --batch-size 8 --rounds 3 --threads 2
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bf16_cpu.py ...

One unit of work = a forward of a random-weight CLIP ViT (``aft_step.py`` geometries, matmul patch embedding
as the trainer uses it) and a backward to the pixels and the weights, exactly what ``accelerator.autocast()``
(``--mixed_precision bf16``) wraps in ``aft_hf.train.aft_step``. fp32 and bf16 alternate (A, B, A, B) after a
warm-up of each; the median ratio fp32 / bf16 is the speed-up. The CPU's bf16 units are read from
``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``) and torch's kernel level from
``torch.backends.cpu.get_cpu_capability()``; the environment variables above make torch, MKL and oneDNN use
AVX2 only, i.e. what a CPU without AVX-512 bf16 / AMX does.

``--unit step`` times the whole trainer step instead (``aft_hf.train.aft_step``: target forward, K attack
iterations, update), fp32 and bf16 alternating: one fp32 ``AftRunner`` per precision, the bf16 one stepped
inside ``torch.autocast("cpu", dtype=torch.bfloat16)``, which is the context ``accelerator.autocast()`` opens
under ``--mixed_precision bf16`` on CPU (one process cannot hold two accelerate precisions).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import GEOMETRIES, build_encoder, make_batch, write_report  # noqa: E402
from arguments import at_least, output_file, positive_int, show_defaults  # noqa: E402

from aft_hf.perf import use_matmul_patch_embedding  # noqa: E402

ISA_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_bf16_units() -> list[str]:
    """The bf16-relevant flags of this CPU (Linux ``/proc/cpuinfo``)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split() if f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2"))


def fwdbwd_work(args: argparse.Namespace):
    """One forward + backward (to pixels and weights) of the tower, fp32 or under bf16 autocast."""
    encoder = build_encoder(args.model, "sdpa").train()
    use_matmul_patch_embedding(encoder.vision)
    images = make_batch(args.batch_size, encoder.image_size, torch.device("cpu"))

    def work(dtype):
        x = images.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = encoder(x).float().pow(2).sum()
        loss.backward()
        encoder.zero_grad(set_to_none=True)

    return work


def step_work(args: argparse.Namespace):
    """One trainer step (``aft_hf.train.aft_step``), fp32 or under bf16 autocast, each precision its own model."""
    from accelerate import Accelerator
    from aft_step import AftRunner, StepOptions

    accelerator = Accelerator(cpu=True)
    runners = {v: AftRunner(accelerator, args.model, args.steps, StepOptions()) for v in ("fp32", "bf16")}
    images = make_batch(args.batch_size, runners["fp32"].image_size, torch.device("cpu"))
    seeds = iter(range(10**6))

    def work(dtype):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            runners[dtype].step(images, torch.Generator().manual_seed(next(seeds)))

    return work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--unit", choices=["fwdbwd", "step"], default="fwdbwd",
                   help="forward+backward of the tower (default) or the whole trainer step (--steps attack iterations)")
    p.add_argument("--steps", type=at_least(0), default=10, help="--unit step: attack iterations K")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", type=output_file, default=None)
    args = show_defaults(p).parse_args(argv)
    if args.unit == "fwdbwd" and "--steps" in (argv if argv is not None else sys.argv[1:]):
        print("note: --steps is used only with --unit step (the forward+backward unit has no attack iterations)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = step_work(args) if args.unit == "step" else fwdbwd_work(args)
    variants = ("fp32", "bf16")
    for v in variants:
        work(v)
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            work(v)
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(t) for v, t in times.items()}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "cpu_flags": cpu_bf16_units(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "isa_env": {k: os.environ.get(k) for k in ISA_ENV}, "threads": torch.get_num_threads(),
              "load": os.getloadavg(), "args": vars(args) | {"json": None}, "seconds": times, "median_s": med,
              "fp32_over_bf16": med["fp32"] / med["bf16"]}
    forced = ", ".join(f"{k}={v}" for k, v in report["isa_env"].items() if v)
    print(f"CPU flags {' '.join(report['cpu_flags']) or '(none read)'}; torch kernels at "
          f"{report['torch_cpu_capability']}" + (f" (instruction sets limited by {forced}: the CPU's bf16 units may be "
                                                 "unused)" if forced else "") + f"; {report['threads']} thread(s)")
    unit = f"AFT step (K={args.steps})" if args.unit == "step" else "forward+backward"
    rounds = f"{args.rounds} alternating round{'s' if args.rounds > 1 else ''}"
    print(f"{args.model} batch {args.batch_size} {unit}: fp32 {med['fp32']:.3f} s, bf16 {med['bf16']:.3f} s "
          f"-> bf16 is {report['fp32_over_bf16']:.2f}x fp32's speed ({rounds}" + (", instruction sets limited" if forced
                                                                                   else "") + ")")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
