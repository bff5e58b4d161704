"""Benchmark of one AFT step against the machine's own matmul limit and a plain reference loop.

    python benchmarks/aft_step.py --model b32 --batch-size 8 --steps 10 --json out.json

From one run it prints (and writes as JSON):

* images/s of the full AFT step (:func:`aft_hf.train.aft_step`, the trainer's own step) and its
  split into target forward / attack / update (forward+backward+clip+AdamW);
* model FLOPs per step, counted with ``torch.utils.flop_counter.FlopCounterMode`` during a
  warm-up step, and the achieved FLOP/s as a fraction of the dense matmul peak measured in
  the same run (fp32 ``torch.mm`` on CPU, bf16 on GPU);
* the same step done by a plain reference loop (parameters requiring grad during the attack,
  train mode, fp32, eager attention, plain AdamW, no accelerate) and the speed ratio;
* peak memory (peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU) of the AFT step
  and of one plain training forward+backward+update of the same batch with the frozen copy
  alive (the 1.1x memory target: the attack must not keep K graphs alive);
* with ``--ablate``: the step again with each optimisation switch flipped, from the same run.

Models are random-weight stand-ins of the real geometries (docs/method.md#model-geometries); speed does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arguments import name_list, output_file, positive_int, refuse_fp16_on_cpu, show_defaults  # noqa: E402

# geometries of docs/method.md#model-geometries (vision tower only: AFT never touches the text tower)
GEOMETRIES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 patch_size=8, image_size=32, projection_dim=32),
    "b32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                patch_size=32, image_size=224, projection_dim=512),
    "b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                patch_size=16, image_size=224, projection_dim=512),
    "l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, image_size=224, projection_dim=768),
}
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
BOOLEAN_SWITCHES = {"freeze": "freeze_params_in_attack", "compile": "compile", "checkpointing": "gradient_checkpointing",
                    "patchmm": "patch_embedding_matmul", "clstoken": "class_token_last_layer"}
"""Each on/off switch's name in ``--ablate`` -> its :class:`StepOptions` field (``attn`` and ``fused`` have more values)."""
ABLATIONS = ("freeze", "attn", "fused", "compile", "checkpointing", "patchmm", "clstoken")


# --------------------------------------------------------------------------- options


@dataclass
class StepOptions:
    """The switches of one AFT step variant (mirrors ``perf.*`` and ``model.attn_implementation``)."""

    freeze_params_in_attack: bool = True
    attn_implementation: str = "sdpa"
    fused_adamw: Optional[bool] = None
    compile: bool = False
    gradient_checkpointing: bool = False
    patch_embedding_matmul: bool = True
    class_token_last_layer: bool = True

    def label(self) -> str:
        fused = "auto" if self.fused_adamw is None else ("on" if self.fused_adamw else "off")
        return (f"freeze={'on' if self.freeze_params_in_attack else 'off'} attn={self.attn_implementation} "
                f"fused={fused} compile={'on' if self.compile else 'off'} "
                f"ckpt={'on' if self.gradient_checkpointing else 'off'} "
                f"patchmm={'on' if self.patch_embedding_matmul else 'off'} "
                f"clstoken={'on' if self.class_token_last_layer else 'off'}")

    def flipped(self, switch: str, device: torch.device) -> "StepOptions":
        """The same options with one switch changed (``ABLATIONS``)."""
        new = StepOptions(**vars(self))
        if switch == "attn":
            new.attn_implementation = "eager" if self.attn_implementation == "sdpa" else "sdpa"
        elif switch == "fused":
            from aft_hf.train import FUSED_ADAMW_DEVICES  # the trainer's default: fused on these devices

            current = self.fused_adamw if self.fused_adamw is not None else device.type in FUSED_ADAMW_DEVICES
            new.fused_adamw = not current
        elif switch in BOOLEAN_SWITCHES:
            setattr(new, BOOLEAN_SWITCHES[switch], not getattr(self, BOOLEAN_SWITCHES[switch]))
        else:
            raise ValueError(f"unknown switch '{switch}' (choose from {', '.join(ABLATIONS)})")
        return new


# --------------------------------------------------------------------------- machine probes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_report(path: Optional[Path], report: dict) -> None:
    """Write a benchmark's report as JSON when ``--json PATH`` was given, and say where."""
    if path:
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.5,
                sizes: tuple[int, ...] = (1024, 2048, 3072)) -> dict:
    """Dense matmul throughput (FLOP/s) of this machine: the best square ``torch.mm`` rate seen.

    The best of several sizes and repetitions, so the number is the machine's own limit under
    the current load, not a datasheet value.
    """
    if device.type == "cuda":
        sizes = (4096, 8192)
    best, by_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        _sync(device)
        rate, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            reps = 1 if device.type == "cpu" else 10
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            _sync(device)
            rate = max(rate, reps * 2 * n ** 3 / (time.perf_counter() - t0))
        by_size[n] = rate
        best = max(best, rate)
        del a, b
    return {"flops_per_s": best, "by_size": by_size, "dtype": str(dtype).replace("torch.", "")}


class Memory:
    """Peak memory of a code region: peak RSS on CPU (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs``), ``torch.cuda.max_memory_allocated`` on GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self._libc = None

    def start(self) -> None:
        """Make RSS follow the live tensors: from here on, glibc mmaps every block over 256 KiB and returns it
        to the OS when freed (instead of caching it in its heap).

        It cannot be undone and changes how every large tensor is allocated (a fresh mapping whose pages
        fault in), an allocator state the trainer never has: with it in force the benchmark timed a ViT-B/32
        step at 9.0-9.8 s where the plain loop took 6.4-7.4 s (issue 23). So it is called after all timed
        steps, and memory is measured in extra steps of its own (``benchmarks/step_agreement.py`` compares).
        """
        if self.device.type == "cpu" and sys.platform.startswith("linux") and self._libc is None:
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")
                self._libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD

    @property
    def unit(self) -> str:
        return "max_memory_allocated" if self.device.type == "cuda" else "peak RSS"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak resident set size (VmHWM) to the current RSS

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _proc_status("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        value = _proc_status("VmHWM")
        if value:
            return value
        import resource  # not Linux: the process-lifetime peak (cannot be reset)

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def measure(self, fn: Callable[[], object]) -> dict:
        """Run ``fn`` once; bytes resident before, at the peak, and the peak minus before."""
        self.reset()
        before = self.current()
        fn()
        _sync(self.device)
        peak = self.peak()
        return {"before": before, "peak": peak, "transient": peak - before}


def _proc_status(key: str) -> int:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def host_sync_check(device: torch.device):
    """On CUDA, record every synchronising operation (``.item()``, D2H copies...) in the block.

    Yields the list of warnings raised by ``torch.cuda.set_sync_debug_mode("warn")`` (None on
    CPU, where there is nothing to wait for): the training step should have none.
    """
    if device.type != "cuda":
        yield None
        return
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def count_flops(fn: Callable[[], object]) -> tuple[int, dict]:
    """FLOPs of ``fn`` counted by ``FlopCounterMode`` (matmuls, convs, attention incl. CPU SDPA)."""

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


# --------------------------------------------------------------------------- models and steps


def build_encoder(model: str, attn_implementation: str, seed: int = 0):
    """A random-weight ``ImageEncoder`` of the named geometry (same weights for the same seed)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from aft_hf.model import ImageEncoder

    if model not in GEOMETRIES:
        raise SystemExit(f"unknown model '{model}' (choose from {', '.join(GEOMETRIES)})")
    config = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **GEOMETRIES[model])
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(config)
    vision.set_attn_implementation(attn_implementation)
    return ImageEncoder(vision)


def make_attacker(k: int, patch_size: int, freeze: bool):
    """The training attack of the recipes: linf 4/255, K steps of 1/255, momentum 0.9."""
    from aft_hf.attack import PGDAttacker

    return PGDAttacker(norm="linf", eps=4 / 255, steps=k, alpha=1 / 255, momentum=0.9, noise_std=1 / 255,
                       patch_size=patch_size, freeze_params=freeze)


class AftRunner:
    """The trainer's step (``aft_hf.train.aft_step``) with its accelerate setup, ready to time."""

    name = "aft_step"

    def __init__(self, accelerator, model_name: str, k: int, options: StepOptions, seed: int = 0):
        from transformers import get_scheduler

        from aft_hf.config import TrainConfig
        from aft_hf.train import apply_perf_options, build_optimizer

        self.accelerator, self.options = accelerator, options
        encoder = build_encoder(model_name, options.attn_implementation, seed)
        self.frozen = encoder.frozen_copy().to(accelerator.device)
        cfg = TrainConfig()
        cfg.perf.compile, cfg.perf.gradient_checkpointing = options.compile, options.gradient_checkpointing
        cfg.perf.fused_adamw = options.fused_adamw
        cfg.perf.patch_embedding_matmul = options.patch_embedding_matmul
        apply_perf_options(cfg, encoder)
        self.attacker = make_attacker(k, encoder.patch_size, options.freeze_params_in_attack)
        encoder.to(accelerator.device)
        optimizer = build_optimizer(cfg, encoder, accelerator.device)
        self.fused = bool(optimizer.defaults.get("fused"))
        scheduler = get_scheduler("constant", optimizer)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(encoder, optimizer, scheduler)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.model.train()
        self.image_size = encoder.image_size
        self.max_grad_norm = cfg.optim.max_grad_norm

    def step(self, images: torch.Tensor, generator: torch.Generator, timings: Optional[dict] = None):
        from aft_hf.train import aft_step

        return aft_step(self.accelerator, self.model, self.unwrapped, self.frozen, self.attacker, self.optimizer,
                        self.scheduler, images, generator, self.max_grad_norm, timings,
                        class_token_last_layer=self.options.class_token_last_layer)

    def baseline(self, images: torch.Tensor) -> None:
        """One training forward+backward+update of the same batch, no attack (the memory yardstick)."""
        from aft_hf.attack import embedding_distance

        with torch.no_grad(), self.accelerator.autocast():
            targets = self.frozen(images)
        with self.accelerator.autocast():
            loss = embedding_distance(self.model(images), targets).mean()
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        self.accelerator.free_memory()
        del self.model, self.optimizer, self.scheduler, self.unwrapped, self.frozen


class ReferenceRunner:
    """A plain AFT loop as first written: fp32, eager attention, train mode, parameters requiring
    grad during the attack (its graph is built through them), plain AdamW, no accelerate."""

    name = "reference"

    def __init__(self, device: torch.device, model_name: str, k: int, seed: int = 0):
        encoder = build_encoder(model_name, "eager", seed)
        self.frozen = encoder.frozen_copy().to(device)
        self.model = encoder.to(device).train()
        self.attacker = make_attacker(k, encoder.patch_size, freeze=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=1e-4)
        self.device = device
        self.image_size = encoder.image_size

    def step(self, images: torch.Tensor, generator: torch.Generator, timings: Optional[dict] = None):
        from aft_hf.attack import embedding_distance

        t0 = time.perf_counter()
        with torch.no_grad():
            targets = self.frozen(images)
        _sync(self.device)
        t1 = time.perf_counter()
        adversarial = self.attacker(self.model, images, lambda e: embedding_distance(e, targets), generator)
        _sync(self.device)
        t2 = time.perf_counter()
        self.optimizer.zero_grad()
        loss = embedding_distance(self.model(adversarial), targets).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        _sync(self.device)
        if timings is not None:
            timings.update(target=t1 - t0, attack=t2 - t1, update=time.perf_counter() - t2)
        return loss.detach(), targets

    def baseline(self, images: torch.Tensor) -> None:
        from aft_hf.attack import embedding_distance

        with torch.no_grad():
            targets = self.frozen(images)
        self.optimizer.zero_grad()
        embedding_distance(self.model(images), targets).mean().backward()
        self.optimizer.step()

    def close(self) -> None:
        del self.model, self.optimizer, self.frozen


def make_batch(batch_size: int, image_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, image_size, image_size, generator=g).to(device)


def resident_bytes(runner) -> int:
    """Bytes of the tensors a runner keeps between steps: model, frozen copy, gradients, optimiser state."""
    seen, total = set(), 0
    tensors = [*runner.model.parameters(), *runner.model.buffers(), *runner.frozen.parameters(),
               *runner.frozen.buffers(), *(p.grad for p in runner.model.parameters() if p.grad is not None)]
    for state in runner.optimizer.state.values():
        tensors.extend(v for v in state.values() if torch.is_tensor(v))
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def warm_up(runner, images: torch.Tensor, warmup: int, count: bool = True) -> dict:
    """Untimed steps; the first counts the FLOPs (and, on CUDA, the host syncs) of one step."""
    result: dict = {}
    gen = torch.Generator(device=images.device)
    for i in range(warmup):
        gen.manual_seed(i)
        if i == 0 and count:
            with host_sync_check(images.device) as syncs:
                flops, by_op = count_flops(lambda: runner.step(images, gen))
            result["flops_per_step"], result["flops_by_op"] = flops, by_op
            if syncs is not None:
                result["host_syncs_per_step"] = sum("synchroniz" in str(w.message) for w in syncs)
        else:
            runner.step(images, gen)
    return result


def timed_step(runner, images: torch.Tensor, seed: int, memory: Optional[Memory]) -> dict:
    """One timed step with its split; with ``memory``, the step's peak above what was resident."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    parts: dict = {}
    if memory is not None:
        memory.reset()
        before = memory.current()
    _sync(images.device)
    t0 = time.perf_counter()
    runner.step(images, gen, parts)
    _sync(images.device)
    out = {"total": time.perf_counter() - t0, **parts}
    if memory is not None:
        out["transient"] = memory.peak() - before
    return out


def summarise(runner, images: torch.Tensor, samples: list[dict], memory: Optional[Memory],
              memory_samples: Optional[list[dict]] = None) -> dict:
    """Medians of the timed steps; memory of the step against one plain training step.

    The memory ratio is (resident + step peak) / (resident + baseline peak), resident being the
    runner's own model, frozen copy, gradients and optimiser state, so runners kept alive side by
    side (for interleaved timing) do not dilute it.
    """
    batch = images.shape[0]
    totals = [s["total"] for s in samples]
    median = statistics.median(totals)
    result = {
        "step_s": totals, "step_s_median": median, "images_per_s": batch / median,
        "split_s": {k: statistics.median(s[k] for s in samples) for k in ("target", "attack", "update")},
    }
    result["split_images_per_s"] = {k: batch / v for k, v in result["split_s"].items() if v > 0}
    if memory is not None:
        own = resident_bytes(runner)
        step_peak = own + max(s["transient"] for s in (memory_samples or samples))
        base = memory.measure(lambda: runner.baseline(images))
        base_peak = own + base["transient"]
        result["memory"] = {"resident": own, "step_transient": step_peak - own, "peak": step_peak}
        result["memory_baseline"] = {"resident": own, "transient": base["transient"], "peak": base_peak}
        result["memory_ratio"] = step_peak / base_peak
    return result


# --------------------------------------------------------------------------- reporting


def _gb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    """The human-readable table of one run (the JSON holds everything)."""
    peak = report["matmul_peak"]["flops_per_s"]
    lines = [
        f"AFT step benchmark: model={report['model']} batch={report['batch_size']} K={report['steps']} "
        f"precision={report['precision']} device={report['device']} threads={report['threads']} "
        f"repeats={report['repeats']}",
        f"machine: {report['machine']}  load before/after: {report['load_before']} / {report['load_after']}",
        f"dense matmul peak ({report['matmul_peak']['dtype']}): {peak / 1e9:.1f} GFLOP/s "
        f"(before {report['matmul_peak_before'] / 1e9:.1f}, after {report['matmul_peak_after'] / 1e9:.1f})",
        "",
        "| variant | images/s | step s | target s | attack s | update s | GFLOP/step | % of peak | vs reference | peak mem "
        "| mem / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report.get("reference")
    for row in report["variants"]:
        lines.append(_row(row, peak, ref))
    if ref:
        lines.append(_row(ref, peak, ref))
    lines.append("")
    main = report["variants"][0]
    flops = main.get("flops_per_step")
    if flops:
        lines.append(f"model FLOPs per step (counted): {flops / 1e9:.1f} GFLOP = {flops / report['batch_size'] / 1e9:.2f} "
                     f"GFLOP per image; achieved {main['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
                     f"{100 * main['fraction_of_peak']:.1f}% of the measured peak")
    if report.get("reference_error"):
        lines.append(f"reference loop: {report['reference_error']}")
    if ref:
        lines.append(f"speed vs reference loop: {main['speedup_vs_reference']:.2f}x "
                     f"({main['images_per_s']:.2f} vs {ref['images_per_s']:.2f} images/s)")
    if "host_syncs_per_step" in main:
        lines.append(f"host syncs inside one step (cuda sync debug mode): {main['host_syncs_per_step']}")
    if "memory" in main:
        lines.append(f"memory ({report['memory_unit']}): AFT step {_gb(main['memory']['peak'])} vs one training "
                     f"forward+backward with the frozen copy {_gb(main['memory_baseline']['peak'])} = "
                     f"{main['memory_ratio']:.3f}x (target <= 1.1x)")
    return "\n".join(lines)


def _row(row: dict, peak: float, ref: Optional[dict]) -> str:
    s = row["split_s"]
    flops = row.get("flops_per_step")
    frac = f"{100 * row['fraction_of_peak']:.1f}%" if "fraction_of_peak" in row else "-"
    vs = f"{row['images_per_s'] / ref['images_per_s']:.2f}x" if ref else "-"
    mem = _gb(row["memory"]["peak"]) if "memory" in row else "-"
    ratio = f"{row['memory_ratio']:.3f}" if "memory_ratio" in row else "-"
    return (f"| {row['label']} | {row['images_per_s']:.2f} | {row['step_s_median']:.3f} | {s['target']:.3f} | "
            f"{s['attack']:.3f} | {s['update']:.3f} | {flops / 1e9:.1f} | {frac} | {vs} | {mem} | {ratio} |"
            if flops else
            f"| {row['label']} | {row['images_per_s']:.2f} | {row['step_s_median']:.3f} | {s['target']:.3f} | "
            f"{s['attack']:.3f} | {s['update']:.3f} | - | {frac} | {vs} | {mem} | {ratio} |")


def _load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "n/a"


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="b32", choices=sorted(GEOMETRIES), help="geometry (random weights)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="attack iterations K")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                   help="fp32, or bf16/fp16 autocast with fp32 master weights (fp16: GPU only; bf16 on CPU pays only "
                        "where lscpu lists avx512_bf16 or amx_bf16, and is many times slower elsewhere)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (FLOPs counted in the first)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention of the AFT step")
    p.add_argument("--no-freeze", action="store_true", help="perf.freeze_params_in_attack=false")
    p.add_argument("--fused-adamw", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--compile", action="store_true", help="torch.compile the vision tower")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--ablate", default="", type=_ablations, help=f"comma list of switches to flip one at a time, from: "
                   f"{', '.join(ABLATIONS)} (or 'all' = all but compile; 'all,compile' = every one)")
    p.add_argument("--no-reference", action="store_true", help="skip the plain reference loop")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--peak-seconds", type=float, default=1.5, help="time per size of the matmul peak probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=output_file, default=None, help="write the full report here")
    args = show_defaults(p).parse_args(argv)
    for name in ("batch_size", "repeats"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.steps < 0 or args.warmup < 1:
        p.error("--steps must be >= 0 and --warmup >= 1 (the warm-up step counts the FLOPs)")
    refuse_fp16_on_cpu(p, args.precision, args.device == "cuda" or (args.device is None and torch.cuda.is_available()))
    return args


def _ablations(text: str) -> list[str]:
    """``--ablate``: a comma list of :data:`ABLATIONS`; ``all`` stands for all of them but ``compile``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    expanded = [s for name in names for s in ([a for a in ABLATIONS if a != "compile"] if name == "all" else [name])]
    return name_list(ABLATIONS)(",".join(dict.fromkeys(expanded))) if expanded else []


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by parsed ``args``; returns the report (also printed)."""
    from accelerate import Accelerator

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    options = StepOptions(freeze_params_in_attack=not args.no_freeze, attn_implementation=args.attn,
                          fused_adamw={"auto": None, "on": True, "off": False}[args.fused_adamw],
                          compile=args.compile, gradient_checkpointing=args.gradient_checkpointing)
    switches = args.ablate
    variants = [("optimised", options)] + [(f"flip {s}", options.flipped(s, device)) for s in switches]

    memory = Memory(device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=PRECISIONS[args.precision])
    report = {
        "model": args.model, "geometry": GEOMETRIES[args.model], "batch_size": args.batch_size, "steps": args.steps,
        "precision": args.precision, "device": str(device), "threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"{platform.processor() or platform.machine()} "
                   f"({os.cpu_count()} cpus)",
        "memory_unit": memory.unit, "load_before": _load(), "variants": [],
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    runners = []
    for name, opts in variants:
        runner = AftRunner(accelerator, args.model, args.steps, opts, args.seed)
        runners.append((name, f"{name}: {opts.label()}", runner,
                        {"options": vars(opts), "fused_resolved": runner.fused}, not opts.compile))
    if not args.no_reference:
        try:
            runners.append(("reference", "reference: plain loop, fp32, eager, train mode, params require grad",
                            ReferenceRunner(device, args.model, args.steps, args.seed), {}, True))
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as e:
            report["reference_error"] = f"out of memory: {str(e).splitlines()[0]}"
    images = make_batch(args.batch_size, runners[0][2].image_size, device, args.seed)
    samples: dict = {name: [] for name, *_ in runners}
    extra: dict = {}
    memory_or_none = None if args.no_memory else memory

    def guarded(name, fn):  # a runner that runs out of memory (the fp32 reference at scale) is dropped
        try:
            return fn()
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as e:
            report[f"{name}_error"] = f"out of memory: {str(e).splitlines()[0]}"
            print(f"{name}: {report[f'{name}_error']}", file=sys.stderr)
            return None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(runners) * (args.warmup + args.repeats), desc="steps", unit="step")
    for name, _, runner, _, count in runners:  # warm-up (and FLOP count) one runner after the other
        extra[name] = guarded(name, lambda r=runner, c=count: warm_up(r, images, args.warmup, c))
        bar.update(args.warmup)
    alive = [r for r in runners if extra[r[0]] is not None]
    for i in range(args.repeats):  # timed steps interleaved, so a change of machine load hits all alike
        for name, _, runner, _, _ in alive:
            sample = guarded(name, lambda r=runner, i=i: timed_step(r, images, 1000 + i, None))
            if sample is not None:
                samples[name].append(sample)
            bar.update(1)
    bar.close()
    # the peak probe frees 36 MiB blocks, which raises glibc's dynamic mmap threshold: steps timed after it run
    # with another allocator state than the trainer's, so it comes after the timed steps (twice: before and
    # after the memory steps)
    before = matmul_peak(device, peak_dtype, args.peak_seconds)
    memory_samples: dict = {name: None for name, *_ in runners}
    if memory_or_none is not None:  # after every timed step: the RSS tracking slows steps down (Memory.start)
        memory.start()
        for name, _, runner, _, _ in alive:
            if samples[name]:
                sample = guarded(name, lambda r=runner: timed_step(r, images, 2000, memory))
                memory_samples[name] = None if sample is None else [sample]
    for name, label, runner, info, _ in runners:
        if samples[name] and (memory_or_none is None or memory_samples[name]):
            row = guarded(name, lambda r=runner, n=name: summarise(r, images, samples[n], memory_or_none,
                                                                   memory_samples[n]))
            if row is not None:
                row.update(name=name, label=label, **info, **extra[name])
                if name == "reference":
                    report["reference"] = row
                else:
                    report["variants"].append(row)
        runner.close()
    del runners, alive
    gc.collect()
    after = matmul_peak(device, peak_dtype, args.peak_seconds)
    report["matmul_peak_before"], report["matmul_peak_after"] = before["flops_per_s"], after["flops_per_s"]
    report["matmul_peak"] = before if before["flops_per_s"] >= after["flops_per_s"] else after
    report["load_after"] = _load()
    peak = report["matmul_peak"]["flops_per_s"]
    if not report["variants"]:
        errors = {k: v for k, v in report.items() if k.endswith("_error")}
        raise SystemExit(f"no AFT step variant completed: {errors}")
    counted = report["variants"][0].get("flops_per_step")
    for row in report["variants"] + ([report["reference"]] if "reference" in report else []):
        # useful work = the optimised step's counted FLOPs (a variant that does more work is not credited for it)
        work = counted or row.get("flops_per_step")
        if work:
            row["achieved_flops_per_s"] = work / row["step_s_median"]
            row["fraction_of_peak"] = row["achieved_flops_per_s"] / peak
        if "reference" in report:
            row["speedup_vs_reference"] = row["images_per_s"] / report["reference"]["images_per_s"]
    return report


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
