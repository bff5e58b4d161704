"""LoRA against full fine-tuning: trainable weights, peak memory and time of the trainer's AFT step.

Each variant runs in a fresh process (so its peak resident memory is its own), on a random-weight
vision tower of a real geometry (default ViT-B/32), through ``aft_hf.train.aft_step``; the variants
alternate (full, lora, full, lora, ...) so that a shared machine's load falls on both.

    python benchmarks/lora_vs_full.py --model b32 --batch-size 8 --attack-steps 2 --steps 3 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arguments import output_file, positive_int, show_defaults  # noqa: E402

GEOMETRIES = {  # docs/method.md#model-geometries: hidden, MLP, layers, heads, patch, image, projection
    "b32": (768, 3072, 12, 12, 32, 224, 512),
    "b16": (768, 3072, 12, 12, 16, 224, 512),
    "tiny": (64, 128, 2, 2, 8, 32, 32),
}


def run_variant(args) -> dict:
    """One variant in this process: build, warm up one step, time ``--steps`` steps; JSON on stdout."""
    import torch
    from accelerate import Accelerator
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from aft_hf.attack import PGDAttacker
    from aft_hf.config import LoraConfig
    from aft_hf.lora import apply_lora, trainable_parameters
    from aft_hf.model import ImageEncoder
    from aft_hf.perf import use_matmul_patch_embedding
    from aft_hf.train import aft_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden, mlp, layers, heads, patch, size, proj = GEOMETRIES[args.model]
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                              num_attention_heads=heads, patch_size=patch, image_size=size, projection_dim=proj,
                              hidden_act="quick_gelu")
    encoder = ImageEncoder(CLIPVisionModelWithProjection(config))
    frozen = encoder.frozen_copy()
    if args.variant == "lora":
        apply_lora(encoder.vision, LoraConfig(r=args.rank, alpha=2 * args.rank))
    use_matmul_patch_embedding(encoder.vision)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(trainable_parameters(encoder), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    attacker = PGDAttacker(norm="linf", eps=4 / 255, steps=args.attack_steps, alpha=1 / 255)
    images = torch.rand(args.batch_size, 3, size, size)
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        aft_step(accelerator, encoder, encoder, frozen, attacker, optimizer, scheduler, images)
        if i:  # the first step pays for allocations and lazy initialisation
            times.append(time.perf_counter() - start)
    return {"variant": args.variant, "trainable": sum(p.numel() for p in trainable_parameters(encoder)),
            "total": sum(p.numel() for p in encoder.parameters()), "step_s": statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(GEOMETRIES), default="b32")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--attack-steps", type=positive_int, default=2)
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=positive_int, default=2, help="alternations of full and LoRA")
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--json", type=output_file, help="write the results here")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = show_defaults(parser).parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results: dict[str, list[dict]] = {"full": [], "lora": []}
    for _ in range(args.rounds):
        for variant in ("full", "lora"):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model,
                   "--batch-size", str(args.batch_size), "--attack-steps", str(args.attack_steps),
                   "--steps", str(args.steps), "--rank", str(args.rank), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
    summary = {}
    for variant, runs in results.items():
        summary[variant] = {"trainable": runs[0]["trainable"], "total": runs[0]["total"],
                            "step_s": statistics.median(r["step_s"] for r in runs),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        s = summary[variant]
        print(f"{variant:5s} trainable {s['trainable']:>11,d} of {s['total']:,d} ({s['trainable'] / s['total']:.2%})"
              f"  step {s['step_s']:.2f} s  peak RSS {s['peak_rss_mb']:.0f} MB")
    full, lora = summary["full"], summary["lora"]
    print(f"LoRA / full: trainable {lora['trainable'] / full['trainable']:.4f}, step time "
          f"{lora['step_s'] / full['step_s']:.2f}x, peak memory {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x "
          f"({args.model}, batch {args.batch_size}, K={args.attack_steps}, rank {args.rank}, {args.threads} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args) | {"json": str(args.json)}, "results": summary}, f, indent=2)


if __name__ == "__main__":
    main()
