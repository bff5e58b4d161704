"""What one attack iteration costs per image: the forward + input-gradient pass APGD repeats, eager and compiled.

    python benchmarks/attack_pass_cost.py --case world --rows 7,20,64,180 --threads 1

Where images stay robust, APGD's time is (1 + targets) x iterations of this pass per image in any
implementation, so its cost per image decides how far the attack can beat the reference AutoAttack. The pass
is timed on the models of ``apgd_vs_autoattack.py`` (``world``: the shipped world CLIP, ``random``: a small
random-weight CLIP ViT), through :func:`aft_hf.attack.attack_mode` as the attack calls it, at several batch
sizes (rows): ``conv`` (the model as it ships and the reference runs it: the patch embedding a convolution, the
whole last layer), ``matmul-patch`` (the patch embedding as a matmul, ``APGDSpeed.patch_matmul``), ``eager`` (the
package's default: that, and the last layer for the class token alone, ``APGDSpeed.class_token_last_layer``) and,
with ``--compile``, ``compiled`` (the default through ``torch.compile(dynamic=True)``; its compilation time is
printed apart); with ``--bf16`` each of ``eager`` and ``compiled`` also under bf16 autocast (``APGDSpeed.autocast``);
with ``--fused``, ``fused`` (forward, loss and input gradient traced together as one compiled graph through
``torch.func.grad``, the default's levers on: what compiling the whole pass, not only the forward, would gain).
Variants alternate per round; medians of ``--rounds``. ``--activation`` adds the QuickGELU
activation alone at the tower's MLP width, eager and compiled: the elementwise share of the pass.
``--attention`` adds one layer's attention alone (forward + backward at the tower's heads, tokens and head
size): SDPA's default CPU kernel (``flash``, what the model runs), SDPA's ``math`` kernel and a compiled
``softmax(Q K^T) V`` (``compiled``): which attention a small tower should run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import write_report  # noqa: E402
from apgd_vs_autoattack import CASES  # noqa: E402
from arguments import int_list, output_file, positive_int, show_defaults  # noqa: E402

from aft_hf.attack import attack_mode  # noqa: E402
from aft_hf.evaluate.apgd import autocast_context  # noqa: E402
from aft_hf.perf import class_token_last_layer, matmul_patch_embedding  # noqa: E402


def seconds_per_call(once, reps: int) -> float:
    """Seconds per call of ``once()`` over ``reps`` calls, after one untimed call."""
    once()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t0) / reps


def pass_seconds(forward, images: torch.Tensor, labels: torch.Tensor, reps: int) -> float:
    """Seconds per forward + gradient of the cross-entropy w.r.t. the images (one APGD iteration's model work)."""
    def once():
        x = images.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(forward(x), labels), x)

    return seconds_per_call(once, reps)


def fused_pass(model: torch.nn.Module, forward):
    """``(images, labels) -> input gradient`` of the cross-entropy with the pass compiled whole: forward, loss and
    backward traced together by ``torch.func.grad`` under one ``torch.compile(dynamic=True)``, the attack's levers
    switched on around each call (the first call compiles)."""
    return as_attack_runs(model, torch.compile(torch.func.grad(lambda x, y: F.cross_entropy(forward(x), y)), dynamic=True))


def as_attack_runs(model: torch.nn.Module, forward, class_token: bool = True):
    """``forward`` (any function of the model's inputs) with the attack's levers on during each call: the patch
    embedding as a matmul (``APGDSpeed.patch_matmul``) and, with ``class_token`` (the default, as the attack), the last
    layer for the class token alone (``APGDSpeed.class_token_last_layer``)."""
    def run(*args: torch.Tensor) -> torch.Tensor:
        with matmul_patch_embedding(model), class_token_last_layer(model) if class_token else contextlib.nullcontext():
            return forward(*args)

    return run


def in_bf16(forward):
    """``forward`` under bf16 autocast on its input's device, logits back in fp32 (as the attack runs it)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(x.device, torch.bfloat16):
            return forward(x).float()

    return run


def activation_seconds(act, rows: int, tokens: int, width: int, reps: int) -> float:
    """Seconds per forward + backward of the activation alone on a (rows, tokens, width) input."""
    base = torch.randn(rows, tokens, width)

    def once():
        h = base.clone().requires_grad_(True)
        torch.autograd.grad(act(h), h, base)

    return seconds_per_call(once, reps)


def attention_variants() -> dict:
    """One layer's attention three ways, ``(q, k, v) -> output``: SDPA's default CPU kernel, its math kernel,
    and ``softmax(q k^T / sqrt(d)) v`` through ``torch.compile``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def math_kernel(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    def spelled_out(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v

    return {"flash": F.scaled_dot_product_attention, "math": math_kernel,
            "compiled": torch.compile(spelled_out, dynamic=True)}


def attention_seconds(attend, rows: int, heads: int, tokens: int, head_dim: int, reps: int) -> float:
    """Seconds per forward + backward (to q, k and v) of ``attend`` on (rows, heads, tokens, head_dim) inputs."""
    base = [torch.randn(rows, heads, tokens, head_dim) for _ in range(4)]

    def once():
        q, k, v = (t.clone().requires_grad_(True) for t in base[:3])
        torch.autograd.grad(attend(q, k, v), (q, k, v), base[3])

    return seconds_per_call(once, reps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="world", choices=sorted(CASES))
    p.add_argument("--rows", default="7,20,64,180", type=int_list, help="comma list of batch sizes")
    p.add_argument("--compile", action="store_true", help="also time the pass through torch.compile")
    p.add_argument("--activation", action="store_true", help="also time the QuickGELU activation alone")
    p.add_argument("--bf16", action="store_true", help="also time the eager (and compiled) pass under bf16 autocast")
    p.add_argument("--attention", action="store_true", help="also time one layer's attention alone, three ways")
    p.add_argument("--fused", action="store_true",
                   help="also time the whole pass (forward, loss, input gradient) compiled as one graph")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--json", type=output_file, default=None)
    args = show_defaults(p).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows
    clf, images, labels = CASES[args.case](max(rows))
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_before": os.getloadavg(),
              "args": vars(args) | {"json": None}, "pass_ms_per_image": {}, "activation_ms": {},
              "attention_ms": {}}
    with attack_mode(clf) as forward:
        variants = {"conv": forward, "matmul-patch": as_attack_runs(clf, forward, class_token=False),
                    "eager": as_attack_runs(clf, forward)}
        if args.bf16:
            variants["eager-bf16"] = as_attack_runs(clf, in_bf16(forward))
        if args.compile:
            t0 = time.perf_counter()
            variants["compiled"] = as_attack_runs(clf, torch.compile(forward, dynamic=True))
            pass_seconds(variants["compiled"], images[:rows[0]], labels[:rows[0]], 1)
            report["compile_s"] = time.perf_counter() - t0
            print(f"compilation (first call, forward and backward): {report['compile_s']:.1f} s")
            if args.bf16:
                variants["compiled-bf16"] = as_attack_runs(clf, torch.compile(in_bf16(forward), dynamic=True))
        timers = {name: functools.partial(pass_seconds, fwd) for name, fwd in variants.items()}  # (images, labels, reps)
        if args.fused:
            t0 = time.perf_counter()
            fused = fused_pass(clf, forward)
            fused(images[:rows[0]], labels[:rows[0]])
            report["fused_compile_s"] = time.perf_counter() - t0
            print(f"compilation of the fused pass (first call): {report['fused_compile_s']:.1f} s")
            timers["fused"] = lambda x, y, reps: seconds_per_call(functools.partial(fused, x, y), reps)
            x, y = images[:rows[0]], labels[:rows[0]]  # the same gradient as the eager pass, up to float32 rounding
            eager_grad = torch.func.grad(lambda z: F.cross_entropy(variants["eager"](z), y))(x)
            report["fused_gradient_rel_diff"] = ((fused(x, y) - eager_grad).norm() / eager_grad.norm()).item()
            print(f"fused gradient against the eager pass's: relative difference {report['fused_gradient_rel_diff']:.1e}")
        for n in rows:
            reps = max(3, 400 // n)
            samples = {v: [] for v in timers}
            for _ in range(args.rounds):
                for name, timer in timers.items():
                    samples[name].append(timer(images[:n], labels[:n], reps) / n)
            med = {v: 1000 * statistics.median(s) for v, s in samples.items()}
            report["pass_ms_per_image"][str(n)] = med
            print(f"rows {n:4d}: " + "  ".join(f"{v} {m:.2f} ms/image" for v, m in med.items()) +
                  f"  conv/matmul-patch {med['conv'] / med['matmul-patch']:.2f}x"
                  f"  matmul-patch/eager {med['matmul-patch'] / med['eager']:.2f}x"
                  f"  conv/eager {med['conv'] / med['eager']:.2f}x" +
                  (f"  eager/compiled {med['eager'] / med['compiled']:.2f}x  conv/compiled {med['conv'] / med['compiled']:.2f}x"
                   if "compiled" in med else "") +
                  (f"  compiled/fused {med['compiled'] / med['fused']:.2f}x" if "compiled" in med and "fused" in med else "") +
                  (f"  eager/fused {med['eager'] / med['fused']:.2f}x" if "fused" in med else ""))
    vision = clf.encoder.vision.config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    if args.activation:
        from transformers.activations import QuickGELUActivation

        act = QuickGELUActivation()
        acts = {"eager": act, "compiled": torch.compile(act, dynamic=True)}
        for n in rows:
            med = {v: 1000 * statistics.median(activation_seconds(a, n, tokens, vision.intermediate_size, 20)
                                               for _ in range(args.rounds)) for v, a in acts.items()}
            report["activation_ms"][str(n)] = med
            print(f"QuickGELU forward+backward, {n} x {tokens} x {vision.intermediate_size}: "
                  f"eager {med['eager']:.2f} ms, compiled {med['compiled']:.2f} ms")
    if args.attention:
        heads, head_dim = vision.num_attention_heads, vision.hidden_size // vision.num_attention_heads
        kinds = attention_variants()
        for n in rows:
            samples = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for name, attend in kinds.items():
                    samples[name].append(attention_seconds(attend, n, heads, tokens, head_dim, 10))
            med = {k: 1000 * statistics.median(v) for k, v in samples.items()}
            report["attention_ms"][str(n)] = med
            print(f"attention forward+backward, one layer, {n} x {heads} heads x {tokens} tokens x {head_dim}: "
                  + ", ".join(f"{k} {m:.2f} ms" for k, m in med.items()))
    report["load_after"] = os.getloadavg()
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
