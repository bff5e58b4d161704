#!/usr/bin/env bash
# The one prepared GPU check of issue 5 (ViT-B/16 and ViT-L/14, batch 128, bf16 autocast).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Runs from the repository root with the Python already on the machine (torch with CUDA,
# transformers, accelerate): it installs nothing and needs no network (random-weight models).
# Writes into $OUT: env.txt, nvidia-smi.txt, b16_bf16_b128.json/.txt, l14_bf16_b128.json/.txt,
# and b16_fp32_b128.json/.txt (the fp32 number for comparison with the 27 images/s of docs/method.md#recipes).
# Each benchmark is time-boxed (150 + 150 + 50 s), so the whole script ends within about 6 minutes, leaving a
# lent machine's 15 minutes room for its start and one rerun.
set -uo pipefail

OUT="${OUT:?set OUT to the folder that receives the results}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python || command -v python3)}"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  "$PY" - <<'EOF'
import sys, torch, transformers, accelerate
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "accelerate", accelerate.__version__)
print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if ! "$PY" -c "import torch, transformers, accelerate, aft_hf; assert torch.cuda.is_available()" 2>>"$OUT/env.txt"; then
  echo "no CUDA torch / transformers / accelerate / aft_hf importable here: see $OUT/env.txt" >&2
  exit 2
fi

status=0
bench() {  # name, seconds, arguments...
  local name=$1 limit=$2; shift 2
  echo "=== $name: benchmarks/aft_step.py $*"
  timeout "$limit" "$PY" benchmarks/aft_step.py --device cuda --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v '%|' | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name failed or timed out (exit $rc)" | tee -a "$OUT/$name.txt"; status=1; }
}

# ViT-B/16: the optimised step with the three GPU switches flipped one at a time, plus the reference
bench b16_bf16_b128 150 --model b16 --batch-size 128 --steps 10 --precision bf16 --repeats 5 --warmup 2 \
  --ablate freeze,fused,checkpointing
# ViT-L/14: optimised vs reference (fp32 eager reference: about 90 GB at batch 128; an OOM is recorded)
bench l14_bf16_b128 150 --model l14 --batch-size 128 --steps 10 --precision bf16 --repeats 3 --warmup 1
# ViT-B/16 in fp32 (TF32 off): the number to compare with the 4 x Quadro RTX 6000 reproduction
bench b16_fp32_b128 50 --model b16 --batch-size 128 --steps 10 --precision fp32 --repeats 2 --warmup 1 \
  --no-reference --no-memory
exit $status
