"""Both directions against the REAL open_clip package: transformers -> open_clip (export-openclip) and
open_clip -> transformers (import-checkpoint), compared on embeddings.

open_clip_torch is installed without its dependencies (``pip install --no-deps open_clip_torch ftfy``):
torchvision cannot sit beside the CPU torch here, and open_clip imports a few torchvision names at
import time (open_clip/transform.py, open_clip/utils.py) for its image transforms, which these tests
do not use. A stub module providing only those names is installed when torchvision is absent (the
``open_clip`` fixture, tests/conftest.py); the
model code (``open_clip.create_model``, the CLIP/VisionTransformer forward) is the real one.
"""

import json

import pytest
import torch

from aft_hf.cli import main
from aft_hf.openclip.importer import import_checkpoint

TOL = 1e-5


def _open_clip_model(open_clip, model_cfg: dict, tmp_path, name: str, pretrained=None, **kw):
    """create_model from a model config registered with add_model_config (the tiny geometry)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(path)
    return open_clip.create_model(name, pretrained=pretrained, **kw).eval()


def _pixels(n=3, size=32, seed=5):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_export_full_clip_loads_in_open_clip(open_clip, tiny_clip_path, tmp_path, capsys):
    """HF CLIPModel -> export-openclip -> open_clip.create_model(name, pretrained=FILE): same image and text
    embeddings and logit scale."""
    from transformers import CLIPModel

    out = tmp_path / "oc" / "tiny_export.safetensors"
    assert main(["export-openclip", str(tiny_clip_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "open_clip.add_model_config" in printed and out.with_suffix(".json").is_file()
    open_clip.add_model_config(out.with_suffix(".json"))
    oc = open_clip.create_model("tiny_export", pretrained=str(out)).eval()  # strict load of the whole CLIP
    hf = CLIPModel.from_pretrained(tiny_clip_path).eval()
    # token ids of the word tokenizer: bos, words, eos (id 3), padding
    text = torch.tensor([[2, 10, 20, 3] + [0] * 12, [2, 30, 31, 32, 40, 3] + [0] * 10])
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=_pixels()).pooler_output
        img_diff = (oc.encode_image(_pixels()) - hf_image).abs().max()
        txt_diff = (oc.encode_text(text) - hf.get_text_features(input_ids=text).pooler_output).abs().max()
    print(f"HF -> open_clip: max |diff| image {img_diff:.2e}, text {txt_diff:.2e}")
    assert img_diff < TOL and txt_diff < TOL
    assert torch.allclose(oc.logit_scale, hf.logit_scale)
    assert main(["export-openclip", str(tiny_clip_path), "--out", str(out)]) == 2  # exists
    assert main(["export-openclip", str(tiny_clip_path), "--out", str(out), "--overwrite"]) == 0  # ours


def test_export_vision_tower_and_import_back(open_clip, tiny_vision_path, tiny_clip_path, tmp_path):
    """Vision-only folder -> image tower file -> open_clip (pretrained_image_path) -> same embeddings ->
    import-checkpoint -> same embeddings again (open_clip -> HF)."""
    from transformers import CLIPVisionModelWithProjection

    from aft_hf.openclip.exporter import export_open_clip, open_clip_model_cfg

    result = export_open_clip(tiny_vision_path, tmp_path / "visual.safetensors")
    assert not result["full"] and result["config_file"] is None
    hf = CLIPVisionModelWithProjection.from_pretrained(tiny_vision_path).eval()
    from transformers import AutoConfig

    cfg = open_clip_model_cfg(AutoConfig.from_pretrained(tiny_clip_path), True)
    oc = _open_clip_model(open_clip, cfg, tmp_path, "tiny_vision_cfg", pretrained_image_path=str(result["file"]))
    with torch.no_grad():
        want = hf(pixel_values=_pixels()).image_embeds
        diff = (oc.encode_image(_pixels()) - want).abs().max()
    print(f"HF vision -> open_clip image tower: max |diff| {diff:.2e}")
    assert diff < TOL
    # open_clip -> HF: save open_clip's own image tower state dict, convert it back
    torch.save(oc.visual.state_dict(), tmp_path / "oc_visual.pt")
    back = import_checkpoint(tmp_path / "oc_visual.pt", str(tiny_clip_path), tmp_path / "back", arch="auto")
    with torch.no_grad():
        again = CLIPVisionModelWithProjection.from_pretrained(back).eval()(pixel_values=_pixels()).image_embeds
        diff_back = (again - oc.encode_image(_pixels())).abs().max()
    print(f"open_clip -> HF: max |diff| {diff_back:.2e}")
    assert diff_back < TOL


def test_real_open_clip_model_imports_with_its_activation(open_clip, tmp_path):
    """A random open_clip CLIP of the tiny geometry with GELU: its whole state dict, with an open_clip_config.json
    saying quick_gelu false beside it, imports with GELU and matches open_clip's image embeddings."""
    from transformers import CLIPVisionModelWithProjection

    from aft_hf.model import save_tiny_clip

    base = save_tiny_clip(tmp_path / "base", seed=1, projection_dim=16)  # a quick_gelu base of the same shape
    cfg = {"embed_dim": 16, "quick_gelu": False,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 80, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    oc = _open_clip_model(open_clip, cfg, tmp_path, "tiny_gelu")
    with torch.no_grad():  # open_clip initialises some weights to zero: randomise everything
        for p in oc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    release = tmp_path / "release"
    release.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, str(release / "open_clip_model.safetensors"))
    (release / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    out = import_checkpoint(release / "open_clip_model.safetensors", str(base), tmp_path / "conv",
                            ignore_unexpected=True)
    assert json.loads((out / "aft_import.json").read_text())["hidden_act"] == "gelu"
    with torch.no_grad():
        got = CLIPVisionModelWithProjection.from_pretrained(out).eval()(pixel_values=_pixels()).image_embeds
        diff = (got - oc.encode_image(_pixels())).abs().max()
    print(f"open_clip (GELU) -> HF: max |diff| {diff:.2e}")
    assert diff < TOL
    # converting with the base's QuickGELU instead would be wrong by far more than the tolerance
    wrong = import_checkpoint(release / "open_clip_model.safetensors", str(base), tmp_path / "wrong",
                              ignore_unexpected=True, activation="quick_gelu")
    with torch.no_grad():
        bad = CLIPVisionModelWithProjection.from_pretrained(wrong).eval()(pixel_values=_pixels()).image_embeds
    assert (bad - oc.encode_image(_pixels())).abs().max() > 100 * TOL


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_named_architectures_match_open_clip_exactly(open_clip, arch):
    """For each named geometry the exported keys and shapes are exactly those of open_clip's own model of that name
    (so create_model(arch, pretrained=FILE, force_quick_gelu=True) loads strictly); built on the meta device."""
    from transformers import CLIPConfig, CLIPModel

    from aft_hf.openclip.exporter import (
        TEXT_ARCHS,
        _check_arch,
        open_clip_model_cfg,
        text_to_open_clip,
        vision_to_open_clip,
    )
    from aft_hf.openclip.importer import ARCHS

    g, t = ARCHS[arch], TEXT_ARCHS[arch]
    config = CLIPConfig(
        vision_config=dict(hidden_size=g.width, intermediate_size=g.mlp, num_hidden_layers=g.layers,
                           num_attention_heads=g.heads, patch_size=g.patch, image_size=g.image,
                           hidden_act="quick_gelu"),
        text_config=dict(hidden_size=t["width"], intermediate_size=4 * t["width"], num_hidden_layers=t["layers"],
                         num_attention_heads=t["heads"], vocab_size=t["vocab_size"],
                         max_position_embeddings=t["context_length"], hidden_act="quick_gelu", eos_token_id=2),
        projection_dim=g.embed)
    with torch.device("meta"):
        sd = CLIPModel(config).state_dict()
        oc = open_clip.create_model(arch, force_quick_gelu=True, device="meta", pretrained_text=False)
    cfg = open_clip_model_cfg(config, True)
    assert _check_arch("auto", cfg, True) == arch
    ours = {f"visual.{k}": tuple(v.shape) for k, v in vision_to_open_clip(sd, g.layers).items()}
    ours.update({k: tuple(v.shape) for k, v in text_to_open_clip(sd, t["layers"]).items()})
    assert ours == {k: tuple(v.shape) for k, v in oc.state_dict().items()}


def _undefined_names(snippet: str) -> set:
    """Names a snippet reads that it neither imports nor assigns (nor are builtins)."""
    import ast
    import builtins

    tree = ast.parse(snippet)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - defined


def test_every_load_snippet_defines_its_names(tiny_vision_path, tiny_clip_path, tmp_path):
    """The issue: the image-tower snippet of a custom geometry used `model` and `safetensors` undefined."""
    from aft_hf.openclip.exporter import export_open_clip

    tower = export_open_clip(tiny_vision_path, tmp_path / "visual.safetensors")
    full = export_open_clip(tiny_clip_path, tmp_path / "full.safetensors")
    for result in (tower, full):
        assert _undefined_names(result["load"]) == set(), result["load"]
    assert "_build_vision_tower" in tower["load"]


def test_image_tower_snippet_runs_in_open_clip(open_clip, tiny_vision_path, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from aft_hf.openclip.exporter import export_open_clip

    result = export_open_clip(tiny_vision_path, tmp_path / "visual.safetensors")
    scope: dict = {}
    exec(result["load"], scope)
    hf = CLIPVisionModelWithProjection.from_pretrained(tiny_vision_path).eval()
    with torch.no_grad():
        diff = (scope["visual"].eval()(_pixels()) - hf(pixel_values=_pixels()).image_embeds).abs().max()
    assert diff < TOL


def test_an_export_imports_back_with_the_activation_its_config_states(tiny_clip_path, tmp_path, capsys):
    """export-openclip writes NAME.json beside NAME.safetensors; import-checkpoint reads the activation from it
    (before, only open_clip_config.json counted, and the import fell back to the base's activation)."""
    from transformers import AutoConfig

    out = tmp_path / "oc" / "tiny_export.safetensors"
    assert main(["export-openclip", str(tiny_clip_path), "--out", str(out)]) == 0
    stated = "quick_gelu" if json.loads(out.with_suffix(".json").read_text())["quick_gelu"] else "gelu"
    capsys.readouterr()
    assert main(["import-checkpoint", str(out), "--base", str(tiny_clip_path), "--out", str(tmp_path / "back")]) == 0
    assert f"activation {stated} [tiny_export.json]" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(tmp_path / "back").vision_config.hidden_act == stated


@pytest.mark.slow
def test_vision_only_export_of_a_full_clip_prints_no_load_report(tiny_clip_path, tmp_path):
    """The text tower left out on purpose is not news: no transformers table of 'UNEXPECTED' keys (a fresh
    process, as a user runs it: transformers reports a load once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "visual.safetensors"
    run = subprocess.run([sys.executable, "-m", "aft_hf", "export-openclip", str(tiny_clip_path), "--vision-only",
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert run.returncode == 0, run.stderr
    assert out.is_file() and "LOAD REPORT" not in run.stderr + run.stdout and "UNEXPECTED" not in run.stderr
