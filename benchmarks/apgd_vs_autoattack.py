"""The package's APGD-CE + APGD-T against the reference AutoAttack (pyautoattack), timed interleaved in one run.

    python benchmarks/apgd_vs_autoattack.py --threads 2 --json apgd_vs_aa.json
    python benchmarks/apgd_vs_autoattack.py --cases random --eps 4 --iterations 20 --rounds 2   # a quick look

Same model, images, labels, eps, iterations (100), restarts (1) and targets (9) for both. Two cases:

- ``world``: the shipped world CLIP (``builtin:world-clip``) on 64 held-out world images with their true
  labels, zero-shot over the world's 16 class captions;
- ``random``: a small random-weight CLIP ViT whose labels are its own clean predictions, so every image is
  attacked (and most are broken early: the case where stopping on a fooled image pays most).

Variants: ``reference`` (pyautoattack ``AutoAttack(attacks=["apgd-ce", "apgd-t"])``), ``package`` (every
lever of :class:`aft_hf.evaluate.apgd.APGDSpeed` at its default) and, with ``--levers``, the package with
one lever switched (``no-shrink``, ``serial-targets``, ``wide-rows``, ``recompute-clean``, ``bf16``, ``compile``,
``conv-patch``, ``full-last-layer``) or several (``compile+wide-rows``). A compiled variant runs once untimed
before the rounds (its compilation; printed), so its medians time the compiled attack alone. Every round runs
each variant once (A, B, C, ..., then again), so load changes on a shared machine hit all variants alike;
medians over rounds, ratios against the reference and against ``package``, robust counts and the share of
images on which each variant's verdict equals the reference's are printed (and written with ``--json``).
``--profile VARIANT`` runs that variant once more under ``torch.profiler`` after the rounds and splits its
self time into attention, matmuls, compiled (fused) kernels, dynamo's guard checks and the rest (the
model's elementwise work when eager, APGD's own step arithmetic), and prints the reference's median over
attention + matmuls + compiled kernels: the most that variant could beat the reference by if everything else
cost nothing (for a compiled variant, the model's own kernels; eager, its elementwise work is in the rest).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aft_step import write_report  # noqa: E402
from arguments import at_least, budget_list, name_list, output_file, positive_int, show_defaults  # noqa: E402
from step_matmuls import MATMUL_NAMES  # noqa: E402

from aft_hf.evaluate import ZeroShotClassifier  # noqa: E402
from aft_hf.evaluate.apgd import APGDSpeed, apgd_robust  # noqa: E402


def world_case(n: int) -> tuple[ZeroShotClassifier, torch.Tensor, torch.Tensor]:
    """The world CLIP, ``n`` held-out images (the world's evaluation seed) and their true labels."""
    from aft_hf.model import load_image_encoder
    from aft_hf.world.dataset import generate_arrays
    from aft_hf.world.storage import load_world_clip
    from aft_hf.world.zeroshot import class_text_embeddings

    clip, tokenizer, cfg = load_world_clip()
    with torch.no_grad():
        text = class_text_embeddings(clip, tokenizer, cfg.world.captions)
    encoder = load_image_encoder("builtin:world-clip").eval()
    clf = ZeroShotClassifier(encoder, text, clip.logit_scale.exp().item()).eval()
    data = generate_arrays(n, cfg.eval_seed, cfg.world)
    images = (torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 255).contiguous()
    return clf, images, torch.from_numpy(data["labels"]).long()


def random_case(n: int) -> tuple[ZeroShotClassifier, torch.Tensor, torch.Tensor]:
    """A random-weight CLIP ViT (64 px, patch 8, width 128, 4 layers), 10 random classes; labels = its predictions."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from aft_hf.model import ImageEncoder

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           patch_size=8, image_size=64, projection_dim=64, hidden_act="quick_gelu")
    clf = ZeroShotClassifier(ImageEncoder(CLIPVisionModelWithProjection(cfg)).eval(), torch.randn(10, 64)).eval()
    images = torch.rand(n, 3, 64, 64)
    with torch.no_grad():
        labels = clf(images).argmax(1)
    return clf, images, labels


CASES: dict[str, Callable[[int], tuple]] = {"world": world_case, "random": random_case}
LEVERS: dict[str, dict] = {"no-shrink": {"shrink": False}, "serial-targets": {"batch_targets": False},
                           "wide-rows": {"max_rows": 256}, "recompute-clean": {"reuse_clean": False},
                           "bf16": {"autocast": torch.bfloat16}, "compile": {"compile": True},
                           "conv-patch": {"patch_matmul": False}, "full-last-layer": {"class_token_last_layer": False}}
"""Each lever's switch against the package's default: ``serial-targets`` one APGD-T run per class (the reference's
way) instead of side by side, ``wide-rows`` up to 256 side-by-side rows at once instead of as many as the images
given, ``conv-patch`` the convolution for the patch embedding, ``full-last-layer`` every row of the tower's last
layer (not the class token's alone), ``bf16`` and ``compile`` switch on what is off by
default; ``a+b`` switches several together."""


def lever_kwargs(name: str) -> dict:
    """``package_run`` keyword arguments of the variant ``name`` (one lever, or several joined by ``+``)."""
    fields: dict = {}
    for part in name.split("+"):
        if part not in LEVERS:
            raise SystemExit(f"unknown lever {part!r} in {name!r} (choose from {', '.join(LEVERS)}, joined by '+')")
        fields |= LEVERS[part]
    reuse_clean = fields.pop("reuse_clean", True)
    return dict(speed=APGDSpeed(**fields), reuse_clean=reuse_clean)


def package_run(clf, images, labels, eps, iterations, targets, seed, speed=APGDSpeed(), reuse_clean=True):
    """The package's robust verdicts, as ``robust_accuracy`` runs it (its clean logits handed over)."""
    clean = None
    if reuse_clean:
        with torch.no_grad():
            clean = clf(images)
    return apgd_robust(clf, images, labels, eps / 255, "linf", iterations, 1, targets, seed, clean_logits=clean,
                       speed=speed)


def reference_run(clf, images, labels, eps, iterations, targets, seed):
    """pyautoattack's APGD-CE + APGD-T (1 restart, ``targets`` classes, ``iterations`` each) -> robust verdicts."""
    import pyautoattack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    aa = pyautoattack.AutoAttack(clf, attacks=["apgd-ce", "apgd-t"], version="custom", eps=eps / 255, norm="Linf",
                                 seed=seed)
    aa.verbose = False
    aa.apgd.n_restarts, aa.apgd_targeted.n_target_classes = 1, targets
    for attack in (aa.apgd, aa.apgd_targeted):  # its checkpoint schedule follows n_iter as in the paper
        attack.n_iter = iterations
        attack.n_iter_2 = max(int(0.22 * iterations), 1)
        attack.n_iter_min, attack.size_decr = max(int(0.06 * iterations), 1), max(int(0.03 * iterations), 1)
    x_adv, _ = aa.run_standard_evaluation(images, labels, batch_size=len(images))
    with torch.no_grad():
        return clf(x_adv).argmax(1) == labels


PROFILE_GROUPS: dict[str, Callable[[str], bool]] = {
    "attention": lambda name: "scaled_dot_product" in name,
    # step_matmuls' matrix-product kernels; on CPU a convolution's own time shows under its oneDNN kernel
    "matmuls": lambda name: name in MATMUL_NAMES or name == "aten::mkldnn_convolution",
    "compiled kernels": lambda name: name.startswith("## Call CompiledFxGraph"),
    "dynamo guards": lambda name: name == "TorchDynamo Cache Lookup",
}
"""How ``--profile`` groups the profiler's operators by self time (the first group that matches; else "rest")."""


def profile_groups(run: Callable[[], object]) -> dict[str, float]:
    """Self CPU seconds of ``run()`` per :data:`PROFILE_GROUPS` group, plus ``rest`` and ``total``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    groups = dict.fromkeys([*PROFILE_GROUPS, "rest"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, match in PROFILE_GROUPS.items() if match(event.key)), "rest")
        groups[group] += event.self_cpu_time_total / 1e6
    groups["total"] = sum(groups.values())
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] + " The defaults (both cases, both budgets, 64 "
                                "images, 2 rounds) take about half an hour on 2 cores; --images 8 --rounds 1 is a quick look.")
    p.add_argument("--cases", default="world,random", type=name_list(CASES), help="comma list of: " + ", ".join(CASES))
    p.add_argument("--eps", default="2,4", type=budget_list, help="comma list of L-inf budgets in 1/255")
    p.add_argument("--images", type=positive_int, default=64, help="images per case (held-out world images, or random)")
    p.add_argument("--iterations", type=positive_int, default=100, help="APGD iterations per run")
    p.add_argument("--targets", type=at_least(0), default=9, help="APGD-T target classes")
    p.add_argument("--rounds", type=positive_int, default=2, help="interleaved rounds (each variant once per round)")
    p.add_argument("--levers", default="", help="comma list of " + ", ".join(LEVERS) +
                   " (or 'all'); join levers with '+' to switch them together, e.g. compile+wide-rows")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (round r uses seed + r)")
    p.add_argument("--profile", default=None, metavar="VARIANT",
                   help="after the rounds, run this variant (package, reference or a lever) once under the profiler")
    p.add_argument("--json", type=output_file, default=None, help="write the full report here")
    args = show_defaults(p).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    levers = list(LEVERS) if args.levers == "all" else [x for x in args.levers.split(",") if x]
    variants: dict[str, Callable] = {"reference": reference_run, "package": package_run}
    for lever in levers:
        variants[lever] = lambda *a, _kw=lever_kwargs(lever): package_run(*a, **_kw)
    compiled = [lever for lever in levers if lever_kwargs(lever)["speed"].compile]
    if any(eps == 0 for eps in args.eps):
        p.error("argument --eps: budgets must be > 0 (at 0 no image can be fooled: nothing to time)")
    if args.profile and args.profile not in variants:
        raise SystemExit(f"--profile {args.profile!r} is not a variant of this run (choose from {', '.join(variants)})")
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_before": os.getloadavg(), "args": vars(args) | {"json": None},
              "results": []}
    for case in args.cases:
        clf, images, labels = CASES[case](args.images)
        with torch.no_grad():
            clean = clf(images)
        clean_correct, classes = int((clean.argmax(1) == labels).sum()), clean.shape[1]
        targets = min(args.targets, classes - 1)  # what both implementations run: one target per other class at most
        warmup = {}
        for name in compiled:  # compile outside the timed rounds (torch caches it for the later runs of this model)
            t0 = time.perf_counter()
            variants[name](clf, images, labels, args.eps[0], args.iterations, targets, args.seed)
            warmup[name] = time.perf_counter() - t0
            print(f"  [{case}] {name}: compilation run {warmup[name]:.2f} s (not timed)", flush=True)
        for eps in args.eps:
            times = {v: [] for v in variants}
            verdicts = {}
            for r in range(args.rounds):
                for name, run in variants.items():
                    t0 = time.perf_counter()
                    verdicts[name] = run(clf, images, labels, eps, args.iterations, targets, args.seed + r)
                    times[name].append(time.perf_counter() - t0)
                    print(f"  [{case} eps {eps:g} round {r + 1}] {name}: {times[name][-1]:.2f} s, robust "
                          f"{int(verdicts[name].sum())}", flush=True)
            med = {v: statistics.median(t) for v, t in times.items()}
            row = {"case": case, "eps": eps, "images": len(images), "clean_correct": clean_correct, "classes": classes,
                   "targets": targets, "compilation_run_s": warmup, "times_s": times,
                   "median_s": med, "robust": {v: int(verdicts[v].sum()) for v in variants},
                   "agreement_with_reference": {v: float((verdicts[v] == verdicts["reference"]).float().mean())
                                                for v in variants},
                   "speedup_vs_reference": {v: med["reference"] / med[v] for v in variants},
                   "ratio_vs_package": {v: med[v] / med["package"] for v in variants}}
            if args.profile:
                row["profile_s"] = profile_groups(lambda: variants[args.profile](
                    clf, images, labels, eps, args.iterations, targets, args.seed))
            report["results"].append(row)
            print(f"\n{case}, eps {eps:g}/255, {len(images)} images ({clean_correct} correct clean), "
                  f"{args.iterations} iterations, {targets} targets" + (f" (of {args.targets} asked: {classes} classes)"
                  if targets < args.targets else "") + f", {args.rounds} interleaved round(s)"
                  + (" after one untimed compilation run of each compiled variant" if compiled else "") + ":")
            width = max(map(len, variants))
            for v in variants:
                print(f"  {v:>{width}}: {med[v]:7.2f} s  robust {row['robust'][v]:3d}  "
                      f"same verdict as reference {100 * row['agreement_with_reference'][v]:5.1f}%  "
                      f"reference/this {row['speedup_vs_reference'][v]:5.2f}x  this/package {row['ratio_vs_package'][v]:5.2f}")
            if args.profile:
                total = row["profile_s"]["total"]
                print(f"  profile of {args.profile} ({total:.2f} s self time): " + ", ".join(
                    f"{g} {t:.2f} s ({100 * t / total:.0f}%)" for g, t in row["profile_s"].items() if g != "total"))
                kernels = sum(row["profile_s"][g] for g in ("attention", "matmuls", "compiled kernels"))
                row["bound_vs_reference"] = med["reference"] / kernels
                print(f"  attention + matmuls + compiled kernels: {kernels:.2f} s; reference / that = "
                      f"{row['bound_vs_reference']:.2f}x (the most {args.profile} could reach if all else were free)")
    report["load_after"] = os.getloadavg()
    print(f"\nload average before {report['load_before'][0]:.1f}, after {report['load_after'][0]:.1f}; "
          f"{report['threads']} thread(s)")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
