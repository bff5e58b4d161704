"""Peak memory and time of `aft-hf graft` on a LLaVA with LLaVA-1.5's real tower geometry (random weights).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/graft_memory.py [--text-layers 4] [--dir /tmp/graft_bench]

Builds, once, a LlavaForConditionalGeneration whose vision tower has the geometry of
openai/clip-vit-large-patch14-336 (ViT-L/14, 336 px: 391 tensors, 303M parameters) and a small Llama,
saved in fp16 in 300 MB shards, and a ViT-L/14-336 AFT folder in fp32 (docs/method.md#model-geometries).
The graft then runs in a fresh process, so its peak resident memory (VmHWM) is the graft's alone:
the language model's shards are copied file to file and the tower's tensors are patched one at a time,
so the peak should not grow with the language model (compare --text-layers 4 and 16).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
from aft_hf.graft import graft

def hwm_mb():  # this process's own peak RSS (ru_maxrss would include the parent's, inherited at fork)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024)

before = hwm_mb()
start = time.perf_counter()
report = graft(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True)
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "grafted": report["grafted"],
                  "shards_patched": len(report["shards_patched"]), "peak_rss_mb": hwm_mb(),
                  "rss_after_imports_mb": before}))
"""


def build(folder: Path, text_layers: int) -> tuple[Path, Path]:
    import torch
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    llava, aft = folder / f"llava_text{text_layers}", folder / "aft_vit_l14_336"
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    if not (llava / "config.json").is_file():
        text = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=text_layers,
                           num_attention_heads=16, num_key_value_heads=16, vocab_size=32064)
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                          image_token_index=32000)).to(torch.float16)
        model.save_pretrained(llava, max_shard_size="300MB")
    if not (aft / "config.json").is_file():
        CLIPVisionModelWithProjection(vision).save_pretrained(aft)
    return llava, aft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/graft_bench"))
    args = parser.parse_args()
    llava, aft = build(args.dir, args.text_layers)
    size_mb = sum(f.stat().st_size for f in llava.glob("*.safetensors")) / 2**20
    out = subprocess.run([sys.executable, "-c", CHILD, str(aft), str(llava), str(args.dir / "out")],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = {"checkpoint_mb": round(size_mb), "text_layers": args.text_layers, **json.loads(out)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
