"""open_clip -> transformers conversion, checked against a reference forward pass written from the
public open_clip parameter names (conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.N.*, ln_post, proj used as x @ proj, QuickGELU)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from aft_hf.cli import main
from aft_hf.openclip.importer import (
    ARCHS,
    ConvertError,
    VitGeometry,
    check_state_dict,
    import_checkpoint,
    infer_geometry,
    open_clip_shapes,
    to_transformers,
)
from tests.convert_helpers import TINY, fake_hub_repo

TOL = 1e-5  # max abs difference of image embeddings (fp32), converted vs reference


class NotATensor:
    """Anything but tensors and plain containers must be refused by weights_only loading."""


def random_open_clip_state(g: VitGeometry, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in open_clip_shapes(g).items():
        t = torch.randn(shape, generator=gen) * 0.2
        if key.endswith(".weight") and ("ln_" in key):
            t = 1 + t  # layer-norm gains around 1
        state[key] = t
    return state


def reference_forward(sd: dict, pixel_values: torch.Tensor, heads: int, act: str = "quick_gelu") -> torch.Tensor:
    """open_clip VisionTransformer forward (OpenAI variant: QuickGELU, class-token pooling, x @ proj)."""
    width = sd["conv1.weight"].shape[0]
    patch = sd["conv1.weight"].shape[-1]

    def ln(x, name):
        return F.layer_norm(x, (width,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    x = F.conv2d(pixel_values, sd["conv1.weight"], stride=patch)  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)  # (B, g*g, W)
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + sd["positional_embedding"]
    x = ln(x, "ln_pre")
    b, n, _ = x.shape
    d = width // heads
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = ln(x, p + "ln_1")
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        attn = attn.transpose(1, 2).reshape(b, n, width)
        x = x + attn @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else F.gelu(h)  # QuickGELU (OpenAI) or GELU
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return ln(x[:, 0], "ln_post") @ sd["proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny full CLIP with projection 16 != width 32 (so a transposed proj cannot pass)."""
    from aft_hf.model import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("base") / "clip", seed=1, projection_dim=16)


@pytest.fixture(scope="module")
def state():
    return random_open_clip_state(TINY)


def _wrap(kind: str, state: dict) -> dict:
    text = {"token_embedding.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)}
    if kind == "bare":
        return state
    if kind == "visual":
        return {**{f"visual.{k}": v for k, v in state.items()}, **text}
    if kind == "state_dict+module":
        return {"state_dict": {f"module.visual.{k}": v for k, v in state.items()}, "epoch": 3, "step": 100}
    if kind == "model":
        return {"model": state, "optimizer": {"lr": 1e-5}}
    raise ValueError(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bare", "visual", "state_dict+module", "model", "safetensors"])
def test_converted_embeddings_match_open_clip_reference(kind, state, base, tmp_path):
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    if kind == "safetensors":
        from safetensors.torch import save_file

        ckpt = tmp_path / "visual.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    else:
        ckpt = tmp_path / "ckpt.pt"
        torch.save(_wrap(kind, state), ckpt)
    out = import_checkpoint(ckpt, str(base), tmp_path / "converted", arch="auto")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    want = reference_forward(state, pixel_values, heads=TINY.heads)
    with torch.no_grad():
        vision = CLIPVisionModelWithProjection.from_pretrained(out).eval()
        got = vision(pixel_values=pixel_values).image_embeds
        full = CLIPModel.from_pretrained(out).eval()
        got_full = full.get_image_features(pixel_values=pixel_values).pooler_output
    assert got.shape == (3, 16)
    assert (got - want).abs().max().item() < TOL
    assert (got_full - want).abs().max().item() < TOL
    # the text tower is the base's, untouched
    base_model = CLIPModel.from_pretrained(base)
    assert torch.equal(full.text_model.embeddings.token_embedding.weight, base_model.text_model.embeddings.token_embedding.weight)
    info = json.loads((out / "aft_import.json").read_text())
    assert info["geometry"] == {"width": 32, "layers": 2, "heads": 2, "mlp": 64, "patch": 8, "image": 32, "embed": 16}
    assert info["ignored_keys"] == (["logit_scale", "token_embedding.weight"] if kind == "visual" else [])


def test_cli_import_then_zero_shot_pipeline(state, base, tmp_path, capsys):
    from PIL import Image
    from transformers import pipeline

    torch.save({"state_dict": state}, tmp_path / "ckpt.pt")
    rc = main(["import-checkpoint", str(tmp_path / "ckpt.pt"), "--arch", "auto", "--base", str(base),
               "--out", str(tmp_path / "converted")])
    assert rc == 0 and "converted" in capsys.readouterr().out
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path / "converted"))
    scores = classifier(Image.new("RGB", (40, 40), (200, 30, 30)), candidate_labels=["a red circle", "a blue star"])
    assert len(scores) == 2 and abs(sum(s["score"] for s in scores) - 1) < 1e-5


def test_pickle_with_objects_is_refused(state, base, tmp_path, capsys):
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": NotATensor()}, ckpt)
    with pytest.raises(ConvertError, match=r"weights_only=True"):
        import_checkpoint(ckpt, str(base), tmp_path / "out")
    assert main(["import-checkpoint", str(ckpt), "--base", str(base), "--out", str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_unexpected_and_mismatched_keys_are_named(state, base, tmp_path):
    missing = {k: v for k, v in state.items() if k != "transformer.resblocks.1.ln_2.bias"}
    torch.save(missing, tmp_path / "m.pt")
    with pytest.raises(ConvertError, match=r"1 missing keys: transformer\.resblocks\.1\.ln_2\.bias"):
        import_checkpoint(tmp_path / "m.pt", str(base), tmp_path / "out")

    torch.save({**state, "ls_1.gamma": torch.ones(32)}, tmp_path / "u.pt")
    with pytest.raises(ConvertError, match=r"1 unexpected keys .*ls_1\.gamma"):
        import_checkpoint(tmp_path / "u.pt", str(base), tmp_path / "out")
    out = import_checkpoint(tmp_path / "u.pt", str(base), tmp_path / "out", ignore_unexpected=True)
    assert json.loads((out / "aft_import.json").read_text())["ignored_keys"] == ["ls_1.gamma"]

    torch.save(state, tmp_path / "s.pt")
    with pytest.raises(ConvertError, match=r"not ViT-B-16: they have width 32, 2 layers.*ViT-B-16 has width 768"):
        import_checkpoint(tmp_path / "s.pt", str(base), tmp_path / "out2", arch="ViT-B-16")
    with pytest.raises(ConvertError, match=r"conv1\.weight: \(32, 3, 8, 8\) \(expected \(32, 3, 16, 16\)\)"):
        check_state_dict(state, VitGeometry(**{**TINY.__dict__, "patch": 16, "image": 64}))
    with pytest.raises(ConvertError, match="unknown --arch"):
        import_checkpoint(tmp_path / "s.pt", str(base), tmp_path / "out2", arch="ViT-H-14")
    torch.save({"epoch": 1, "weights": state}, tmp_path / "w.pt")
    with pytest.raises(ConvertError, match="no state dict found.*epoch, weights"):
        import_checkpoint(tmp_path / "w.pt", str(base), tmp_path / "out2")


def test_base_must_match_and_be_a_full_clip(base, tiny_vision_path, tmp_path):
    other = random_open_clip_state(VitGeometry(width=32, layers=2, heads=2, mlp=48, patch=8, image=32, embed=16))
    torch.save(other, tmp_path / "o.pt")
    with pytest.raises(ConvertError, match="mlp: checkpoint 48, base 64"):
        import_checkpoint(tmp_path / "o.pt", str(base), tmp_path / "out")
    with pytest.raises(ConvertError, match="must be a full CLIPModel"):
        import_checkpoint(tmp_path / "o.pt", str(tiny_vision_path), tmp_path / "out")
    with pytest.raises(ConvertError, match="Offline, --base must be a local folder"):
        import_checkpoint(tmp_path / "o.pt", "nobody/not-cached-clip", tmp_path / "out")


@pytest.mark.parametrize("arch,vision", [
    ("ViT-B-32", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      patch_size=32, image_size=224, projection_dim=512)),
    ("ViT-B-16", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      patch_size=16, image_size=224, projection_dim=512)),
    ("ViT-L-14", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      patch_size=14, image_size=224, projection_dim=768)),
])
def test_arch_table_fills_the_real_transformers_models(arch, vision):
    """Each named geometry, mapped, gives exactly the keys and shapes of the real model (built on meta)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    g = ARCHS[arch]
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_act="quick_gelu", **vision))
        state = {k: torch.empty(s) for k, s in open_clip_shapes(g).items()}
    assert infer_geometry(state, heads=g.heads) == g
    mapped = {k: tuple(v.shape) for k, v in to_transformers(state, g).items()}
    assert mapped == {k: tuple(v.shape) for k, v in model.state_dict().items()}


LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 605133553\n")


@pytest.mark.parametrize("damage,message", [
    ("truncated.safetensors", "is truncated"),
    ("pointer.safetensors", "Git LFS pointer"),
    ("truncated.pt", "truncated or damaged"),
    ("pointer.pt", "Git LFS pointer"),
    ("empty.pt", "is empty"),
    ("text.pt", "is not a checkpoint"),
])
def test_damaged_files_are_named_for_what_they_are(state, base, tmp_path, capsys, damage, message):
    from safetensors.torch import save_file

    path = tmp_path / damage
    if damage.startswith("truncated"):
        full = tmp_path / f"full{path.suffix}"
        save_file(state, str(full)) if path.suffix == ".safetensors" else torch.save(state, full)
        data = full.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage.startswith("pointer"):
        path.write_bytes(LFS_POINTER)
    elif damage.startswith("empty"):
        path.write_bytes(b"")
    else:
        path.write_text("<html>Sign in to download</html>")
    rc = main(["import-checkpoint", str(path), "--base", str(base), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "arbitrary code" not in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.slow
def test_import_from_a_hub_repo_offline(state, base, hub_cache, tmp_path, capsys):
    """An open_clip repo (weights + open_clip_config.json saying GELU) resolves from the cache with HF_HUB_OFFLINE=1."""
    import os

    from safetensors.torch import save
    from transformers import CLIPVisionModelWithProjection

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    full_state = {f"visual.{k}": v.contiguous() for k, v in state.items()}
    fake_hub_repo(hub_cache, "someone/robust-clip", {
        "open_clip_model.safetensors": save(full_state),
        "open_clip_config.json": json.dumps({"model_cfg": {"embed_dim": 16, "quick_gelu": False}}).encode()})
    out = tmp_path / "converted"
    assert main(["import-checkpoint", "someone/robust-clip", "--base", str(base), "--out", str(out)]) == 0
    assert "activation gelu [open_clip_config.json]" in capsys.readouterr().out
    info = json.loads((out / "aft_import.json").read_text())
    assert info["source_checkpoint"] == "someone/robust-clip/open_clip_model.safetensors"
    assert info["hidden_act"] == "gelu"
    # the vision tower now computes GELU, as the checkpoint was trained: the reference with GELU agrees
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = CLIPVisionModelWithProjection.from_pretrained(out).eval()(pixel_values=pixel_values).image_embeds
    assert (got - reference_forward(state, pixel_values, TINY.heads, act="gelu")).abs().max().item() < TOL
    assert main(["import-checkpoint", "someone/not-cached", "--base", str(base), "--out", str(tmp_path / "x")]) == 2
    assert "Offline, only files already in the Hub cache" in capsys.readouterr().err
    assert main(["import-checkpoint", "ckpts/fare4.pt", "--base", str(base), "--out", str(tmp_path / "y")]) == 2
    assert "checkpoint 'ckpts/fare4.pt' does not exist" in capsys.readouterr().err  # a typo, not a repo id


def test_activation_stated_by_the_user(state, base, tmp_path, caplog):
    torch.save(state, tmp_path / "v.pt")
    out = import_checkpoint(tmp_path / "v.pt", str(base), tmp_path / "a", activation="gelu")
    assert json.loads((out / "aft_import.json").read_text())["hidden_act"] == "gelu"
    assert "activation mismatch" in caplog.text  # the base (OpenAI-style) is quick_gelu: said loudly
    out = import_checkpoint(tmp_path / "v.pt", str(base), tmp_path / "b", arch="auto")
    info = json.loads((out / "aft_import.json").read_text())
    assert (info["hidden_act"], info["activation_source"]) == ("quick_gelu", "base")
    from aft_hf.openclip.importer import checkpoint_activation

    assert checkpoint_activation("auto", "ViT-B-16-quickgelu", None) == ("quick_gelu", "--arch")
    assert checkpoint_activation("auto", "auto", {"quick_gelu": True}) == ("quick_gelu", "open_clip_config.json")
    assert checkpoint_activation("auto", "auto", {"embed_dim": 768}) == (None, "base")  # no flag: not guessed
