"""Speed switches change speed, not results; the benchmarks run and write valid JSON.

What each switch guarantees is tested without calibrating to one CPU's rounding:

- forward and input gradient (what the attack reads at every iteration) equal the plain path
  to a tolerance derived from float32 precision (relative 1e-4: rounding of a 2-layer tower is
  ~1e-6; a wrong computation differs by O(1));
- training equivalence on a path that is not chaotic. The L-inf attack takes *sign* steps, so a
  near-zero input-gradient entry whose sign flips under another summation order moves a pixel by
  a whole step: its trained weights differ by an amount set by one CPU's rounding (on one machine
  2.00e-2 of the update, on another a different switch). The L2 attack normalises the gradient
  instead, a continuous map. The gap is measured on what the model computes (embeddings of fixed
  probe images, relative to how far training moved them), not on raw weights: AdamW's first step
  is lr * sign(g), and some weights have a gradient that is zero in exact arithmetic (the key
  bias: softmax ignores a shift shared by all keys), so rounding noise decides their sign on each
  kernel, a weight difference the model's outputs never see.

Reference behaviour: parameter graph in the attack, eager attention, for-each AdamW, no
checkpointing, convolutional patch embedding. ``perf.compile`` is tested on its own (one slow
test: its compilation takes 20-45 s on 2 cores; ``benchmarks/aft_step.py --ablate compile`` measures its speed).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModelWithProjection

from aft_hf.config import load_config
from aft_hf.train import train
from tests.image_helpers import write_png_folder

REPO = Path(__file__).resolve().parents[1]
PLAIN = ["--perf.freeze_params_in_attack", "false", "--model.attn_implementation", "eager",
         "--perf.fused_adamw", "false", "--perf.gradient_checkpointing", "false",
         "--perf.patch_embedding_matmul", "false", "--perf.class_token_last_layer", "false"]
SWITCHES = {
    "freeze_params_in_attack": ["--perf.freeze_params_in_attack", "true"],
    "sdpa": ["--model.attn_implementation", "sdpa"],
    "fused_adamw": ["--perf.fused_adamw", "true"],
    "gradient_checkpointing": ["--perf.gradient_checkpointing", "true"],
    "patch_embedding_matmul": ["--perf.patch_embedding_matmul", "true"],
    "class_token_last_layer": ["--perf.class_token_last_layer", "true"],
}
# Forward and input gradient: float32 rounding through a 2-layer tower is ~1e-7 relative (measured
# 1.6e-7 to 4e-7, native AVX-512 and forced AVX2 alike); 1e-4 is far above it and far below a wrong
# computation (O(1)). Training: five AdamW steps amplify rounding, because AdamW's first step is
# lr * sign(g) and a weight with a near-zero gradient takes a full step either way; measured gaps
# 0 to 7e-4 of the update over both instruction sets. 1e-2 leaves an order of magnitude for other
# CPUs and sits an order below an update that is 10% wrong (a gap of 0.1).
TRAINING_TOLERANCE = 1e-2
FORWARD_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def runs(tiny_clip_path, tmp_path_factory, single_thread):
    """Embeddings of fixed probe images by the plain run, each switch alone and all switches (L2 attack), the
    embeddings of the untrained model, ``run(name, extra_args)`` to train and embed one more variant, and the
    exported folder of each run by name."""
    root = tmp_path_factory.mktemp("perf")
    data = write_png_folder(root / "imgs", 16)
    probe = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def embed(path) -> torch.Tensor:
        model = CLIPVisionModelWithProjection.from_pretrained(path, attn_implementation="eager").eval()
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        with torch.no_grad():
            return model(pixel_values=((probe - mean) / std)).image_embeds.double()

    def run(name, extra):
        cfg = load_config(None, [
            "--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(data),
            "--output_dir", str(root / name), "--optim.batch_size", "8", "--max_steps", "5",
            "--warmup_steps", "0", "--scheduler", "constant", "--lr", "1e-3", "--attack.steps", "3",
            "--attack.norm", "l2", "--attack.eps", "64", "--attack.alpha", "16",
            "--logging.report_to", "none", "--log_every", "100", "--checkpointing_steps", "100", *PLAIN, *extra])
        outputs[name] = train(cfg)
        return embed(outputs[name])

    outputs = {}
    embeddings = {"plain": run("plain", [])}
    for name, extra in SWITCHES.items():
        embeddings[name] = run(name, extra)
    embeddings["all"] = run("all", [arg for extra in SWITCHES.values() for arg in extra])
    return embeddings, embed(tiny_clip_path), run, outputs


def _run_benchmark(script: str, args: str, out: Path) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` offline with ``args`` (split on spaces) and ``--json out``; fail with its stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args.split(), "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _relative_gap(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor) -> float:
    """||a - b|| / ||b - initial||: how far two trained models' embeddings are, in units of what training moved."""
    return ((a - b).norm() / (b - initial).norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("switch", [*SWITCHES, "all"])
def test_switch_leaves_trained_model_within_tolerance(runs, switch):
    embeddings, initial, *_ = runs
    moved = ((embeddings["plain"] - initial).norm() / initial.norm()).item()
    assert moved > 1e-2, "training did not move the embeddings: the comparison would be vacuous"
    gap = _relative_gap(embeddings[switch], embeddings["plain"], initial)
    print(f"{switch}: relative gap {gap:.2e}")
    assert gap <= TRAINING_TOLERANCE, f"{switch}: embeddings differ by {gap:.2e} of the update (tol {TRAINING_TOLERANCE})"


@pytest.mark.parametrize("on", [True, False])
def test_trainer_runs_the_class_token_last_layer_when_switched_on(tiny_clip_path, tmp_path, class_token_calls, single_thread,
                                                                   on):
    """``perf.class_token_last_layer`` reaches every pass of the trainer's step (the frozen targets, the attack and
    the update), and the trained model's last layer is whole afterwards (it saves and explains as before)."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    calls = class_token_calls
    cfg = load_config(None, [
        "--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(write_png_folder(tmp_path / "imgs", 4)),
        "--output_dir", str(tmp_path / "out"), "--optim.batch_size", "4", "--max_steps", "1", "--warmup_steps", "0",
        "--attack.steps", "2",
        "--logging.report_to", "none", "--perf.class_token_last_layer", str(on).lower()])
    out = train(cfg)
    # per step: 1 frozen target pass, attack steps x (forward + backward through the layer), 1 update forward
    assert len(calls) == (1 + 2 + 1 if on else 0)
    last = CLIPVisionModelWithProjection.from_pretrained(out).vision_model.encoder.layers[-1]
    assert type(last) is CLIPEncoderLayer


@pytest.mark.slow
def test_compiled_tower_trains_as_the_eager_one_and_saves_plain_weights(runs):
    """``perf.compile: true`` (``torch.compile`` of the vision tower, the path a GPU run takes) on CPU through the
    same trainer: the tower really runs compiled (dynamo captures graphs and does not fall back to eager after too
    many recompilations), the trained model is within the switches' tolerance of the eager plain run, and the
    exported folder loads with ``from_pretrained`` (the embedding helper loads it; no ``_orig_mod.`` keys)."""
    import torch._dynamo
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    embeddings, initial, run, outputs = runs
    torch._dynamo.reset()
    counters.clear()
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # raise instead of running eager
            compiled = run("compile", ["--perf.compile", "true"])
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    gap = _relative_gap(compiled, embeddings["plain"], initial)
    print(f"compiled tower: {graphs} graphs, relative gap {gap:.2e}")  # measured: 3 graphs, 2.5e-05
    assert graphs >= 1, "the tower never ran compiled"
    assert gap <= TRAINING_TOLERANCE, f"compiled tower: embeddings differ by {gap:.2e} of the update"
    keys = [k for f in sorted(outputs["compile"].glob("*.safetensors")) for k in load_file(str(f))]
    assert keys and not any("_orig_mod" in k for k in keys)


@pytest.mark.slow
def test_training_gap_detects_a_wrong_switch(runs):
    """The measure is not vacuous: a model whose update is off by 10% is outside the tolerance."""
    embeddings, initial, *_ = runs
    broken = embeddings["plain"] + 0.1 * (embeddings["plain"] - initial)
    assert _relative_gap(broken, embeddings["plain"], initial) > 5 * TRAINING_TOLERANCE


def _forward_and_input_grad(model_path, attn: str, patch_matmul: bool, checkpointing: bool):
    from aft_hf.model import load_image_encoder
    from aft_hf.perf import use_matmul_patch_embedding

    torch.manual_seed(0)
    enc = load_image_encoder(str(model_path), attn_implementation=attn)
    if patch_matmul:
        use_matmul_patch_embedding(enc.vision)
    if checkpointing:
        enc.vision.train()
        enable = getattr(enc.vision, "activation_checkpointing_enable", None) or \
            enc.vision.gradient_checkpointing_enable
        enable()
    size = enc.vision.config.image_size
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    target = torch.randn(4, enc(pixels).shape[-1], generator=torch.Generator().manual_seed(2))
    emb = enc(pixels)
    ((emb - target) ** 2).sum().backward()
    return emb.detach(), pixels.grad


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["sdpa", "patch_embedding_matmul", "gradient_checkpointing", "all"])
def test_switch_keeps_forward_and_input_gradient(tiny_clip_path, single_thread, switch):
    plain = _forward_and_input_grad(tiny_clip_path, "eager", False, False)
    on = {"sdpa": ("sdpa", False, False), "patch_embedding_matmul": ("eager", True, False),
          "gradient_checkpointing": ("eager", False, True), "all": ("sdpa", True, True)}[switch]
    fast = _forward_and_input_grad(tiny_clip_path, *on)
    for name, a, b in (("embedding", fast[0], plain[0]), ("input gradient", fast[1], plain[1])):
        rel = ((a - b).norm() / b.norm()).item()
        print(f"{switch} {name}: relative difference {rel:.2e}")
        assert rel <= FORWARD_TOLERANCE, f"{switch}: {name} differs by {rel:.2e} (relative, tol {FORWARD_TOLERANCE})"


@pytest.mark.slow
def test_benchmark_smoke_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    done = _run_benchmark("aft_step.py", "--model tiny --batch-size 2 --steps 2 --repeats 1 "
                                          "--threads 1 --peak-seconds 0.1 --ablate freeze", out)
    report = json.loads(out.read_text())
    assert "| variant | images/s |" in done.stdout and "speed vs reference loop" in done.stdout
    assert [v["name"] for v in report["variants"]] == ["optimised", "flip freeze"]
    main, ref = report["variants"][0], report["reference"]
    assert main["options"]["freeze_params_in_attack"] and not report["variants"][1]["options"]["freeze_params_in_attack"]
    assert main["images_per_s"] > 0 and ref["images_per_s"] > 0
    assert set(main["split_s"]) == {"target", "attack", "update"}
    # FLOPs are counted, not guessed: tiny ViT (2 layers, 17 tokens), 2 images, K=2, > 1 MFLOP and < 1 GFLOP
    assert 1e6 < main["flops_per_step"] < 1e9
    assert any("mm" in op for op in main["flops_by_op"])
    assert 0 < main["fraction_of_peak"] < 1.5 and report["matmul_peak"]["flops_per_s"] > 1e8
    assert main["speedup_vs_reference"] == pytest.approx(main["images_per_s"] / ref["images_per_s"])
    assert main["memory"]["peak"] > 0 and main["memory_ratio"] > 0.5


def test_linear_fit_of_scaling():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from scaling import linear_fit

    fit = linear_fit([1, 2, 5, 10], [1.5, 2.5, 5.5, 10.5])
    assert fit["a"] == pytest.approx(0.5) and fit["b"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    assert linear_fit([1, 2, 3], [1.0, 3.0, 1.0])["r2"] < 0.1


def test_matmul_patch_embedding_context_switches_back_only_what_it_switched():
    """The evaluation attack's ``with matmul_patch_embedding(model)``: switches the plain patchifying convolutions,
    and on exit (an error included) only those; one the trainer switched before stays a matmul."""
    from torch import nn

    from aft_hf.perf import MatmulPatchEmbedding, matmul_patch_embedding, use_matmul_patch_embedding

    plain, trained, overlapping = nn.Conv2d(3, 4, 2, stride=2), nn.Conv2d(3, 4, 2, stride=2), nn.Conv2d(3, 4, 3)
    pointwise = nn.Conv2d(3, 4, 1)  # stride = kernel = 1, but no patch embedding: left alone
    use_matmul_patch_embedding(trained)
    with pytest.raises(RuntimeError, match="inside"):
        with matmul_patch_embedding(nn.ModuleList([plain, trained, overlapping, pointwise])) as switched:
            assert switched == 1 and type(plain) is MatmulPatchEmbedding
            assert type(overlapping) is nn.Conv2d and type(pointwise) is nn.Conv2d
            raise RuntimeError("inside")
    assert type(plain) is nn.Conv2d and type(trained) is MatmulPatchEmbedding and type(overlapping) is nn.Conv2d


def test_matmul_patch_embedding_is_the_convolution(tiny_clip_path, tmp_path):
    """Same forward, same input gradient, same parameters and checkpoint as the convolution it replaces."""
    import torch
    from torch import nn

    from aft_hf.perf import MatmulPatchEmbedding, restore_conv_patch_embedding, use_matmul_patch_embedding

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False)
    fast = nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False)
    fast.load_state_dict(conv.state_dict())
    assert use_matmul_patch_embedding(fast) == 1 and isinstance(fast, MatmulPatchEmbedding)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y_ref, y = conv(x), fast(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g_ref, = torch.autograd.grad((y_ref * y_ref.detach()).sum(), x)
    g, = torch.autograd.grad((y * y_ref.detach()).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    # a convolution that is not a patchify (overlapping windows) is left alone
    assert use_matmul_patch_embedding(nn.Conv2d(3, 4, kernel_size=3, stride=1)) == 0
    # the vision tower keeps its parameter names and saves/loads as before
    vision = CLIPVisionModelWithProjection.from_pretrained(tiny_clip_path)
    keys = set(vision.state_dict())
    assert use_matmul_patch_embedding(vision) == 1
    assert set(vision.state_dict()) == keys
    vision.save_pretrained(tmp_path / "v")
    again = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "v")
    assert type(again.vision_model.embeddings.patch_embedding) is nn.Conv2d
    restore_conv_patch_embedding(vision)
    assert type(vision.vision_model.embeddings.patch_embedding) is nn.Conv2d


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_class_token_last_layer_gives_the_pooled_embedding_and_its_input_gradient(tiny_clip_path, attn):
    """The last layer computing the class token alone (its output is one row): the same embedding and input
    gradient as the whole layer, for both attention implementations, with attention dropout configured (off in
    eval mode, as the whole layer's); the layer whole again after."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    from aft_hf.model import load_image_encoder
    from aft_hf.perf import ClassTokenLastLayer, class_token_last_layer

    torch.manual_seed(0)
    enc = load_image_encoder(str(tiny_clip_path), attn_implementation=attn).eval()
    last = enc.vision.vision_model.encoder.layers[-1]
    last.self_attn.dropout = 0.5
    x = torch.rand(3, 3, 32, 32)
    direction = torch.randn(3, enc(x).shape[-1])

    def embedding_and_gradient():
        pixels = x.clone().requires_grad_(True)
        out = enc(pixels)
        return out.detach(), torch.autograd.grad((out * direction).sum(), pixels)[0]

    whole = embedding_and_gradient()
    with class_token_last_layer(enc) as switched:
        assert switched == 1 and type(last) is ClassTokenLastLayer
        assert enc.vision(pixel_values=x).last_hidden_state.shape[1] == 1  # the short path ran
        only_class_token = embedding_and_gradient()
    assert type(last) is CLIPEncoderLayer
    for name, a, b in zip(("embedding", "input gradient"), only_class_token, whole):
        assert _relative(a, b) <= FORWARD_TOLERANCE, f"{name} differs by {_relative(a, b):.2e}"
    assert whole[1].norm() > 0


def test_class_token_last_layer_leaves_what_reads_other_rows_alone(tiny_clip_path, tmp_path):
    """Only encoders returning CLIP's pooled class token are switched: LLaVA's patch tokens, a SigLIP tower
    (attention-pooling head over all rows) and a layer whose part a hook watches stay whole. transformers' own
    output recorder (hooked on at the first request for attentions) does not stop the switch, and a request
    for hidden states inside the block gets every row. Nested blocks and an encoder given twice switch a layer
    once; on exit (an error included) exactly the switched layers get their class back."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    from aft_hf.model import load_image_encoder, save_tiny_siglip, tower
    from aft_hf.perf import ClassTokenLastLayer, class_token_last_layer

    pooled = load_image_encoder(str(tiny_clip_path), attn_implementation="eager").eval()
    x = torch.rand(2, 3, 32, 32)
    whole = pooled.vision(pixel_values=x, output_hidden_states=True, output_attentions=True)  # recorder hooks on
    tokens = load_image_encoder(str(tiny_clip_path), embedding="patch_tokens")
    siglip = load_image_encoder(str(save_tiny_siglip(tmp_path / "siglip")))
    hooked = load_image_encoder(str(tiny_clip_path))
    hooked.vision.vision_model.encoder.layers[-1].mlp.register_forward_hook(lambda *args: None)
    last = [tower(e.vision).encoder.layers[-1] for e in (pooled, tokens, siglip, hooked)]
    before = [type(layer) for layer in last]
    with pytest.raises(RuntimeError, match="inside"):
        with class_token_last_layer(torch.nn.ModuleList([pooled, tokens, siglip, hooked]), pooled) as switched:
            assert switched == 1
            assert [type(layer) for layer in last] == [ClassTokenLastLayer] + before[1:]
            with class_token_last_layer(pooled) as again:
                assert again == 0
            assert type(last[0]) is ClassTokenLastLayer
            asked = pooled.vision(pixel_values=x, output_hidden_states=True, output_attentions=True)
            assert asked.last_hidden_state.shape == whole.last_hidden_state.shape
            assert len(asked.attentions) == len(whole.attentions)
            assert _relative(asked.hidden_states[-1], whole.hidden_states[-1]) <= FORWARD_TOLERANCE
            assert pooled.vision(pixel_values=x).last_hidden_state.shape[1] == 1  # no request: the short path
            raise RuntimeError("inside")
    assert [type(layer) for layer in last] == before and before[0] is CLIPEncoderLayer
    with class_token_last_layer(tokens):  # patch tokens come out whole, from the penultimate layer
        assert tokens(x).shape == (2, 16 * tokens.vision.config.hidden_size)


def test_class_token_last_layer_runs_whole_where_a_hook_above_the_layer_or_a_global_hook_would_see_it(tiny_clip_path):
    """A hook on a module between the tower and its last layer (here the encoder, which returns the tower's
    ``last_hidden_state``) or a global module hook sees every row: set before or inside the block, it makes the
    layer run whole; once removed, the short path runs again. No attribute is left on the layer after the block."""
    from aft_hf.model import load_image_encoder, tower
    from aft_hf.perf import class_token_last_layer

    encoder = load_image_encoder(str(tiny_clip_path)).eval()
    x, seen = torch.rand(2, 3, 32, 32), []
    layers = tower(encoder.vision).encoder
    tokens = layers.layers[-1].self_attn.config.image_size // layers.layers[-1].self_attn.config.patch_size
    tokens = tokens ** 2 + 1

    def record(module, args, out):
        seen.append(out.last_hidden_state.shape[1] if hasattr(out, "last_hidden_state") else out.shape[1])

    handle = layers.register_forward_hook(record)
    with class_token_last_layer(encoder) as switched:  # hooked before the block: not switched at all
        assert switched == 0
        encoder(x)
    handle.remove()
    with class_token_last_layer(encoder) as switched:
        assert switched == 1
        handle = layers.register_forward_hook(record)  # hooked inside the block: the whole layer from then on
        encoder(x)
        handle.remove()
        unhooked = encoder.vision(pixel_values=x).last_hidden_state.shape[1]
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: seen.append(out.shape[1]) if module is layers.layers[-1] else None)
        encoder(x)
        handle.remove()
    assert seen == [tokens, tokens, tokens] and unhooked == 1
    assert not hasattr(layers.layers[-1], "_class_token_ancestors")


@pytest.mark.slow
def test_data_pipeline_benchmark_smoke(tmp_path):
    """The data benchmark decodes real JPEGs through the trainer's loader, skips the corrupt one, writes JSON."""
    out = tmp_path / "data.json"
    _run_benchmark("data_pipeline.py", "--n-images 12 --size 32 --batch-size 4 --workers 0 --batches 1", out)
    report = json.loads(out.read_text())
    assert report["files"]["n_corrupt"] == 1 and report["per_core"]["failed"] == 1
    assert report["per_core"]["decoded"] == 11 and report["per_core"]["images_per_s"] > 0
    assert [(r["streaming"], r["workers"]) for r in report["loaders"]] == [(False, 0), (True, 0)]
    assert all(r["images"] == 4 for r in report["loaders"])
    assert report["workers_needed_for_target"] >= 1


@pytest.mark.slow
def test_ab_switch_benchmark_counts_each_variants_flops(tmp_path):
    """With ``--switch clstoken`` the whole last layer does more FLOPs than the class token's row alone: each
    variant's FLOPs (the work it does, printed beside its time) are counted on that variant."""
    out = tmp_path / "ab.json"
    _run_benchmark("ab_switch.py", "--switch clstoken --model tiny --batch-size 2 --steps 1 --rounds 2 --threads 1", out)
    flops = json.loads(out.read_text())["flops_per_step"]
    assert flops["flip clstoken"] > flops["default"] > 1e6


@pytest.mark.slow
def test_ab_switch_benchmark_smoke(tmp_path):
    """The interleaved A/B benchmark times both variants in alternation and writes their ratio."""
    out = tmp_path / "ab.json"
    _run_benchmark("ab_switch.py", "--switch patchmm --model tiny --batch-size 2 "
                                    "--steps 2 --rounds 3 --threads 1", out)
    report = json.loads(out.read_text())
    assert set(report["median_step_s"]) == {"default", "flip patchmm"}
    assert all(len(t) == 2 for t in report["step_s"].values())
    assert report["options"]["default"]["patch_embedding_matmul"] is True
    assert report["options"]["flip patchmm"]["patch_embedding_matmul"] is False
    ratio = report["median_step_s"]["flip patchmm"] / report["median_step_s"]["default"]
    assert report["speedup_of_default"] == pytest.approx(ratio) and min(report["flops_per_step"].values()) > 1e6


@pytest.mark.slow
def test_step_benchmark_times_its_steps_before_the_rss_tracking_slows_them(monkeypatch):
    """aft_step.py used to fix glibc's mmap threshold (for RSS measurements) before its timed steps, an
    allocator state the trainer never has: the tracking now starts after the last timed step, and memory is
    measured in steps of its own."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import aft_step

    events = []
    real_timed, real_start = aft_step.timed_step, aft_step.Memory.start
    monkeypatch.setattr(aft_step, "timed_step", lambda runner, images, seed, memory: (
        events.append("memory step" if memory is not None else "timed step"), real_timed(runner, images, seed, memory))[1])
    monkeypatch.setattr(aft_step.Memory, "start", lambda self: (events.append("start"), real_start(self))[0])
    report = aft_step.run(aft_step.parse_args(["--model", "tiny", "--batch-size", "2", "--steps", "1", "--repeats", "2",
                                               "--threads", "1", "--peak-seconds", "0.05", "--no-reference"]))
    assert events == ["timed step", "timed step", "start", "memory step"]
    main = report["variants"][0]
    assert len(main["step_s"]) == 2 and main["memory"]["peak"] > 0


@pytest.mark.slow
def test_step_matmuls_benchmark_replays_the_steps_matrix_products(tmp_path):
    """step_matmuls.py records the step's matmul kernels (attention and patch embedding included) and times them;
    --profile adds the step's ops by self time."""
    out = tmp_path / "mm.json"
    done = _run_benchmark("step_matmuls.py", "--model tiny --batch-size 2 --steps 1 --rounds 1 --reps 1 --threads 1 "
                                             "--profile", out)
    report = json.loads(out.read_text())
    assert "aten::addmm" in {r["op"] for r in report["profile"]} and "one step under torch.profiler" in done.stdout
    ops = {k["op"] for k in report["kernels"]}
    assert {"addmm.default", "_scaled_dot_product_flash_attention_for_cpu.default",
            "_scaled_dot_product_flash_attention_for_cpu_backward.default"} <= ops
    assert sum(k["count"] for k in report["kernels"]) > 20 and report["matmul_s"][0] > 0
    assert report["step_over_matmul"] == pytest.approx(report["step_s"][0] / report["matmul_s"][0])


@pytest.mark.slow
def test_step_agreement_benchmark_compares_the_benchmark_with_a_plain_trainer_loop(tmp_path):
    """step_agreement.py runs aft_step.py and a plain aft_step loop in fresh processes and reports their ratio."""
    out = tmp_path / "agree.json"
    done = _run_benchmark("step_agreement.py", "--model tiny --batch-size 2 --steps 1 "
                                                "--threads 1 --repeats 1 --rounds 1", out)
    report = json.loads(out.read_text())
    assert set(report["samples"]) == {"benchmark", "plain"}
    assert all(len(v) == 1 and v[0] > 0 for v in report["samples"].values())
    assert report["within_10_percent"] == (abs(report["median"]["benchmark"] / report["median"]["plain"] - 1) <= 0.10)
    assert "within 10% of the plain loop" in done.stdout

@pytest.mark.slow
@pytest.mark.parametrize("unit", ["fwdbwd", "step"])
def test_bf16_benchmark_times_fp32_and_bf16_alternating(tmp_path, unit):
    """bf16_cpu.py times the tower's forward+backward or the whole trainer step in fp32 and bf16, and reports
    the CPU's bf16 units and torch's kernel level beside the ratio."""
    out = tmp_path / "bf16.json"
    done = _run_benchmark("bf16_cpu.py", f"--model tiny --batch-size 2 --rounds 2 "
                                          f"--unit {unit} --steps 1 --threads 1", out)
    report = json.loads(out.read_text())
    assert all(len(report["seconds"][v]) == 2 and min(report["seconds"][v]) > 0 for v in ("fp32", "bf16"))
    assert report["fp32_over_bf16"] == pytest.approx(report["median_s"]["fp32"] / report["median_s"]["bf16"])
    assert report["torch_cpu_capability"] and ("AFT step (K=1)" in done.stdout) == (unit == "step")

@pytest.mark.slow
def test_attack_pass_cost_benchmark_times_the_pass_per_image_and_the_activation(tmp_path):
    """attack_pass_cost.py times APGD's forward+input-gradient pass per image at each batch size, and QuickGELU alone."""
    out = tmp_path / "pass.json"
    done = _run_benchmark("attack_pass_cost.py", "--case random --rows 2,4 --rounds 1 --activation --attention --bf16 "
                                                  "--threads 1", out)
    report = json.loads(out.read_text())
    assert set(report["pass_ms_per_image"]) == {"2", "4"}
    assert set(report["pass_ms_per_image"]["4"]) == {"conv", "matmul-patch", "eager", "eager-bf16"}
    assert min(report["pass_ms_per_image"]["4"].values()) > 0
    assert set(report["activation_ms"]["2"]) == {"eager", "compiled"} and "compile_s" not in report
    assert "rows    4: conv" in done.stdout and "matmul-patch/eager" in done.stdout
    assert set(report["attention_ms"]["4"]) == {"flash", "math", "compiled"} and "attention forward" in done.stdout


@pytest.mark.slow
def test_attack_pass_cost_fused_pass_computes_the_eager_gradient(tmp_path):
    """``--fused`` times the pass compiled whole (torch.func.grad under torch.compile) and checks that it computes the
    eager pass's input gradient (relative 1e-4: float32 rounding through a small tower is ~1e-7, a wrong graph O(1))."""
    out = tmp_path / "fused.json"
    done = _run_benchmark("attack_pass_cost.py", "--case random --rows 2,3 --rounds 1 --fused --threads 1", out)
    report = json.loads(out.read_text())
    assert set(report["pass_ms_per_image"]["3"]) == {"conv", "matmul-patch", "eager", "fused"}
    assert report["fused_gradient_rel_diff"] < FORWARD_TOLERANCE and report["fused_compile_s"] > 0
    assert "eager/fused" in done.stdout


def test_fused_adamw_is_the_default_on_cpu_and_can_be_switched_off(tiny_clip_path):
    """The trainer's AdamW runs torch's fused kernel on CPU as on CUDA (the path GPUs take is the tested one);
    ``perf.fused_adamw: false`` gives the per-parameter loop."""
    from aft_hf.model import load_image_encoder
    from aft_hf.train import build_optimizer

    encoder = load_image_encoder(str(tiny_clip_path))
    cpu = torch.device("cpu")
    default = load_config(None, ["--model.name_or_path", str(tiny_clip_path)])
    assert build_optimizer(default, encoder, cpu).defaults["fused"] is True
    off = load_config(None, ["--model.name_or_path", str(tiny_clip_path), "--perf.fused_adamw", "false"])
    assert not build_optimizer(off, encoder, cpu).defaults["fused"]

def test_fused_adamw_skips_a_nonfinite_step_on_cpu():
    """The non-finite skip of the fused AdamW kernel (found_inf, the path CUDA runs by default) runs on CPU through
    the same NonFiniteGuard.step: a NaN loss leaves weights, moments and the step count untouched."""
    import torch
    from accelerate import Accelerator

    from aft_hf.guards import NonFiniteGuard

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard, accelerator = NonFiniteGuard(3, torch.device("cpu")), Accelerator(cpu=True)

    def step(loss_value):
        model(torch.ones(1, 4)).sum().backward()
        guard.step(accelerator, optimizer, torch.tensor(loss_value), torch.tensor(1.0))
        optimizer.zero_grad()

    step(1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    step(float("nan"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in optimizer.state[model.weight].items())
    assert int(guard.total) == 1 and not hasattr(optimizer, "found_inf")
    step(1.0)
    assert not torch.equal(before["weight"], model.weight) and int(guard.run) == 0


def test_bf16_aft_step_on_cpu_runs_the_attack_and_update_in_bf16(tiny_clip_path):
    """--mixed_precision bf16 on CPU: the trainer's aft_step (under Accelerator(mixed_precision="bf16")) runs the
    attack's and the training forward's matmuls in bf16, keeps fp32 master weights, and updates them."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from aft_hf.config import TrainConfig
    from aft_hf.model import load_image_encoder
    from aft_hf.train import aft_step, build_attacker, build_optimizer

    AcceleratorState._reset_state(True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        encoder = load_image_encoder(str(tiny_clip_path))
        frozen, cfg = encoder.frozen_copy(), TrainConfig()
        cfg.attack.steps = 2
        optimizer = build_optimizer(cfg, encoder, accelerator.device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        model, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
        dtypes = []
        fc1 = encoder.vision.vision_model.encoder.layers[0].mlp.fc1
        fc1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        before = fc1.weight.detach().clone()
        loss, _ = aft_step(accelerator, model, encoder, frozen, build_attacker(cfg, encoder), optimizer, scheduler,
                           torch.rand(2, 3, 32, 32), torch.Generator().manual_seed(0), 1.0)
        assert dtypes and set(dtypes) == {torch.bfloat16}  # attack iterations and the training forward
        assert len(dtypes) == cfg.attack.steps + 1
        assert torch.isfinite(loss) and fc1.weight.dtype == torch.float32
        assert not torch.equal(before, fc1.weight.detach())
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.slow
def test_apgd_vs_autoattack_benchmark_smoke(tmp_path):
    """The APGD benchmark times the reference and the package interleaved and reports per-image agreement."""
    pytest.importorskip("pyautoattack", reason="the reference: pip install aft_hf[autoattack]")
    out = tmp_path / "apgd.json"
    levers = ("no-shrink,serial-targets,wide-rows,recompute-clean,bf16,conv-patch,full-last-layer,"
              "serial-targets+no-shrink")  # no compile
    done = _run_benchmark("apgd_vs_autoattack.py", "--cases random --images 6 --eps 4 --iterations 3 --targets 2 "
                                                    f"--rounds 2 --levers {levers} --threads 1 --profile package", out)
    (row,) = json.loads(out.read_text())["results"]
    variants = {"reference", "package", *levers.split(",")}
    assert set(row["median_s"]) == variants and all(len(t) == 2 for t in row["times_s"].values())
    assert row["agreement_with_reference"]["reference"] == 1.0 and row["clean_correct"] == 6
    assert all(0 <= a <= 1 for a in row["agreement_with_reference"].values())
    profile = row["profile_s"]  # the eager package: attention and matmuls, nothing compiled
    assert profile["attention"] > 0 and profile["matmuls"] > 0 and profile["compiled kernels"] == 0
    assert profile["total"] == pytest.approx(sum(t for g, t in profile.items() if g != "total"))
    assert "profile of package" in done.stdout and row["bound_vs_reference"] > 0


def test_apgd_vs_autoattack_compiles_outside_the_timed_rounds_and_caps_the_targets(tmp_path, monkeypatch, capsys):
    """A compiled variant runs once untimed before the rounds (its compilation would otherwise sit in a round and,
    with 2 rounds, in the median); every run gets the targets both implementations can run (classes - 1), and the
    header says how many were asked. The attacks are stand-ins here: this is about the timing loop."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import apgd_vs_autoattack as bench

    images, labels = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    five_classes = lambda x: torch.arange(5.0).flip(0).expand(len(x), 5)  # noqa: E731  (every image: class 0)
    monkeypatch.setitem(bench.CASES, "random", lambda n: (five_classes, images, labels))
    calls = []

    def fake(name):
        def run(clf, x, y, eps, iterations, targets, seed, **kw):
            calls.append((name, targets, kw.get("speed").compile if "speed" in kw else None))
            return torch.ones(len(x), dtype=torch.bool)
        return run

    monkeypatch.setattr(bench, "reference_run", fake("reference"))
    monkeypatch.setattr(bench, "package_run", fake("package"))
    out = tmp_path / "r.json"
    assert bench.main(["--cases", "random", "--eps", "4", "--rounds", "2", "--levers", "compile", "--targets", "20",
                       "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert [c[2] for c in calls].count(True) == 3 and calls[0][2] is True  # compiled: 1 untimed + 2 timed runs
    assert len(row["times_s"]["compile"]) == 2 and set(row["compilation_run_s"]) == {"compile"}
    assert {c[1] for c in calls} == {4} and row["targets"] == 4  # 5 classes: at most 4 targets
    assert "4 targets (of 20 asked: 5 classes)" in capsys.readouterr().out


def test_apgd_vs_autoattack_refuses_an_unknown_lever_in_one_line():
    """A misspelt lever (alone or joined by '+') stops the benchmark before any model is built, naming it."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "apgd_vs_autoattack.py"), "--levers", "compile+shrimp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown lever 'shrimp' in 'compile+shrimp'" in done.stderr


@pytest.mark.parametrize("script, args, message", [
    ("apgd_vs_autoattack", ["--cases", "world,foo"], "argument --cases: unknown 'foo' (choose from world, random)"),
    ("apgd_vs_autoattack", ["--eps", "2,x"], "argument --eps: expected a number, got 'x'"),
    ("apgd_vs_autoattack", ["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    ("apgd_vs_autoattack", ["--eps", "0,2"], "argument --eps: budgets must be > 0"),
    ("apgd_vs_autoattack", ["--json", "/nonexistent-folder/r.json"], "argument --json: folder '/nonexistent-folder' does not"),
    ("step_agreement", ["--model", "foo"], "argument --model: invalid choice: 'foo'"),
    ("step_agreement", ["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    ("step_matmuls", ["--json", "/tmp"], "argument --json: '/tmp' is a folder"),
    ("attack_pass_cost", ["--rows", "4,-2"], "argument --rows: must be >= 1, got -2"),
    ("ab_switch", ["--rounds", "1"], "argument --rounds: must be >= 2, got 1"),  # the first round is a warm-up
    ("bf16_cpu", ["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("step_matmuls", ["--reps", "0"], "argument --reps: must be >= 1, got 0"),
    ("aft_step", ["--ablate", "attn,bogus"], "argument --ablate: unknown 'bogus'"),
])
def test_benchmarks_refuse_bad_arguments_in_one_line(script, args, message, capsys, monkeypatch):
    """Bad sizes, lists and names stop a benchmark at once with argparse's one-line error, not minutes later."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = __import__(script)
    entry = module.parse_args if script == "aft_step" else module.main
    with pytest.raises(SystemExit) as stop:
        entry(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", ["aft_step", "step_matmuls"])
def test_step_benchmarks_refuse_fp16_on_cpu(script, capsys, monkeypatch):
    """accelerate keeps fp16 on CPU in fp32: timing it as fp16 would mislabel fp32's numbers. The machine is made
    to look GPU-less, so the refusal is tested on any machine; where a GPU is seen, fp16 is accepted."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = __import__(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        (module.parse_args if script == "aft_step" else module.main)(["--precision", "fp16"])
    assert "--precision fp16 needs a GPU" in capsys.readouterr().err
    if script == "aft_step":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert module.parse_args(["--precision", "fp16"]).precision == "fp16"


def test_step_benchmark_ablations_flip_the_trainers_defaults(monkeypatch):
    """``--ablate fused`` flips the trainer's default on this device (fused AdamW on CPU and CUDA), so the flipped
    variant really runs the other optimiser; ``all`` is every switch but compile, ``all,compile`` every one."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from aft_step import ABLATIONS, StepOptions, parse_args

    from aft_hf.train import FUSED_ADAMW_DEVICES

    cpu = torch.device("cpu")
    assert "cpu" in FUSED_ADAMW_DEVICES and StepOptions().flipped("fused", cpu).fused_adamw is False
    assert StepOptions(fused_adamw=False).flipped("fused", cpu).fused_adamw is True
    assert parse_args(["--ablate", "all"]).ablate == [a for a in ABLATIONS if a != "compile"]
    assert sorted(parse_args(["--ablate", "all,compile"]).ablate) == sorted(ABLATIONS)


@pytest.mark.parametrize("script, shown", [
    ("apgd_vs_autoattack", "(default: world,random)"), ("attack_pass_cost", "(default: 7,20,64,180)"),
    ("ab_switch", "(default: patchmm)"), ("bf16_cpu", "(default: b32)"), ("step_matmuls", "(default: fp32)"),
    ("aft_step", "(default: 8)"), ("step_agreement", "(default: b32)"),
])
def test_benchmark_help_says_what_a_bare_run_does(script, shown, capsys, monkeypatch):
    """``--help`` of each benchmark prints every option's default, so a bare run's size is no surprise."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = __import__(script)
    with pytest.raises(SystemExit) as stop:
        (module.parse_args if script == "aft_step" else module.main)(["--help"])
    assert stop.value.code == 0 and shown in " ".join(capsys.readouterr().out.split())
