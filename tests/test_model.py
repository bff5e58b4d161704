"""Model loading (full CLIPModel or vision-only), the [0,1]-pixel wrapper, the frozen copy, export."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPVisionModelWithProjection

from aft_hf.model import ImageEncoder, ModelLoadError, export_pretrained, load_image_encoder


def test_full_clip_and_vision_only_give_the_same_encoder(tiny_clip_path, tiny_vision_path, batch):
    full = load_image_encoder(str(tiny_clip_path))
    vision_only = load_image_encoder(str(tiny_vision_path))
    assert full.base_is_full_clip and not vision_only.base_is_full_clip
    clip = CLIPModel.from_pretrained(tiny_clip_path)
    mean = torch.tensor(full.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(full.image_processor.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = F.normalize(clip.get_image_features(pixel_values=(batch - mean) / std).pooler_output, dim=-1)
        assert torch.allclose(full(batch), ref, atol=1e-5)
        assert torch.allclose(vision_only(batch), ref, atol=1e-5)


def test_normalisation_inside_and_optional_l2(tiny_clip_path, batch):
    raw = load_image_encoder(str(tiny_clip_path), normalize=False)
    with torch.no_grad():
        emb = raw(batch)
        direct = raw.vision(pixel_values=(batch - raw.mean) / raw.std).image_embeds
    assert torch.allclose(emb, direct) and not torch.allclose(emb.norm(dim=-1), torch.ones(4))
    assert raw.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_processor_statistics_are_used(tiny_clip_path, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_clip_path, folder)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg["image_mean"], cfg["image_std"] = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    enc = load_image_encoder(str(folder))
    assert enc.mean.flatten().tolist() == [0.5] * 3 and enc.std.flatten().tolist() == [0.25] * 3


def test_frozen_copy_is_independent(tiny_encoder, batch):
    frozen = tiny_encoder.frozen_copy()
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    before = [p.clone() for p in frozen.parameters()]
    opt = torch.optim.SGD(tiny_encoder.parameters(), lr=1.0)
    tiny_encoder(batch).sum().backward()
    saved = [p.detach().clone() for p in tiny_encoder.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.parameters()))
    with torch.no_grad():  # restore the shared session fixture
        for p, s in zip(tiny_encoder.parameters(), saved):
            p.copy_(s)
            p.grad = None


@pytest.mark.slow
def test_export_full_clip_keeps_text_tower(tiny_clip_path, tmp_path, batch):
    enc = load_image_encoder(str(tiny_clip_path))
    with torch.no_grad():
        enc.vision.visual_projection.weight.add_(0.1)
    out = export_pretrained(enc, tmp_path / "final", extra_files={"aft_config.yaml": "x: 1\n"})
    assert (out / "model.safetensors").is_file() and (out / "aft_config.yaml").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()
    base, new = CLIPModel.from_pretrained(tiny_clip_path), CLIPModel.from_pretrained(out)
    for (name, a), b in zip(base.text_model.state_dict().items(), new.text_model.state_dict().values()):
        assert torch.equal(a, b), name
    vision = CLIPVisionModelWithProjection.from_pretrained(out)
    assert torch.equal(vision.visual_projection.weight, enc.vision.visual_projection.weight)
    again = load_image_encoder(str(out))
    with torch.no_grad():
        assert torch.allclose(again(batch), enc(batch), atol=1e-6)


def test_export_vision_only(tiny_vision_path, tmp_path):
    enc = load_image_encoder(str(tiny_vision_path))
    out = export_pretrained(enc, tmp_path / "final")
    assert json.loads((out / "config.json").read_text())["model_type"] == "clip_vision_model"
    CLIPVisionModelWithProjection.from_pretrained(out)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="(?s)could not load model 'me/not-there'.*HF_HUB_OFFLINE"):
        load_image_encoder("me/not-there")
    with pytest.raises(ModelLoadError, match="unknown builtin model"):
        load_image_encoder("builtin:huge")
    with pytest.raises(ModelLoadError, match="'./not-there': no such folder"):  # not a Hub-id error
        load_image_encoder("./not-there")
    (tmp_path / "out").mkdir()  # 'out/final' could be a Hub id, but with a local 'out' a mistyped folder is likelier
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="could not load model 'out/fnal': no such local folder \\('out' exists, "
                                             "'out/fnal' does not\\); as a Hub id: "):
        load_image_encoder("out/fnal")
    (tmp_path / "out" / "model.safetensors").write_bytes(b"weights")  # the weights file, not its folder
    with pytest.raises(ModelLoadError, match="'out/model.safetensors': it is a file; give the folder that holds it "
                                             r"\('out'\)"):
        load_image_encoder("out/model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is not a model folder \\(no config.json\\)"):  # was a ValueError
        load_image_encoder(str(tmp_path / "empty"))
    from transformers import BertConfig, BertModel

    bert = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertModel(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="'bert' model; aft_hf fine-tunes CLIP"):
        load_image_encoder(str(tmp_path / "bert"))


def test_train_with_a_mistyped_model_creates_no_output_folder(tmp_path, capsys):
    """The model is checked before the writability probe creates output_dir: a typo leaves no empty folder."""
    from aft_hf.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model.name_or_path", str(tmp_path / "typo"), "--output_dir", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not out.exists()


def test_builtin_tiny_clip_builds_once_and_loads():
    enc = load_image_encoder("builtin:tiny-clip")
    assert isinstance(enc, ImageEncoder) and enc.image_size == 32 and enc.patch_size == 8


# --------------------------------------------------------------------------- CLIPVisionModel bases


@pytest.fixture(scope="module")
def bare_vision_path(tmp_path_factory, tiny_clip_path):
    """A CLIPVisionModel folder (no projection), the class LLaVA-style projects use."""
    from transformers import CLIPVisionModel

    full = CLIPModel.from_pretrained(tiny_clip_path)
    vision = CLIPVisionModel(full.config.vision_config)
    tower = getattr(vision, "vision_model", vision)  # transformers 5 flattened CLIPVisionModel
    tower.load_state_dict(full.vision_model.state_dict())
    path = tmp_path_factory.mktemp("bare_vision") / "model"
    vision.save_pretrained(path)
    load_image_encoder(str(tiny_clip_path)).image_processor.save_pretrained(path)
    return path


def test_clip_vision_model_uses_its_pooled_output_never_a_random_projection(bare_vision_path, batch, tmp_path):
    from transformers import CLIPVisionModel

    enc = load_image_encoder(str(bare_vision_path))
    assert not enc.has_projection and type(enc.vision) is CLIPVisionModel
    ref = CLIPVisionModel.from_pretrained(bare_vision_path)
    with torch.no_grad():
        expected = F.normalize(ref(pixel_values=(batch - enc.mean) / enc.std).pooler_output, dim=-1)
        assert torch.allclose(enc(batch), expected, atol=1e-5)
    out = export_pretrained(enc, tmp_path / "final")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["CLIPVisionModel"] and (out / "preprocessor_config.json").is_file()
    again = load_image_encoder(str(out))
    assert type(again.vision) is CLIPVisionModel


def test_patch_tokens_embedding_is_the_mean_per_patch_distance(bare_vision_path, tiny_clip_path, batch):
    from aft_hf.attack import embedding_distance

    for path in (bare_vision_path, tiny_clip_path):
        enc = load_image_encoder(str(path), embedding="patch_tokens")
        pixel_values = (batch - enc.mean) / enc.std
        with torch.no_grad():
            hidden = enc.vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            tokens = F.normalize(hidden[-2][:, 1:], dim=-1)
            emb, other = enc(batch), enc(batch.flip(-1))
            tokens_other = F.normalize(enc.vision(pixel_values=pixel_values.flip(-1), output_hidden_states=True)
                                       .hidden_states[-2][:, 1:], dim=-1)
        n = (32 // 8) ** 2
        assert emb.shape == (4, n * tokens.shape[-1])
        per_patch = (tokens - tokens_other).pow(2).sum(-1).mean(-1)
        assert torch.allclose(embedding_distance(emb, other), per_patch, atol=1e-5)
    with pytest.raises(ModelLoadError, match="unknown model.embedding"):
        load_image_encoder(str(tiny_clip_path), embedding="cls")


def test_patch_tokens_follow_the_feature_layer_a_vlm_reads(tiny_clip_path, batch):
    """``model.feature_layer`` picks the hidden state (as a VLM's ``vision_feature_layer``): -1 reads the last
    layer's tokens, which -2 (LLaVA-1.5's default) leaves out; an index that is no layer is refused."""
    from aft_hf.config import ConfigError, load_config

    last = load_image_encoder(str(tiny_clip_path), embedding="patch_tokens", feature_layer=-1)
    with torch.no_grad():
        hidden = last.vision(pixel_values=(batch - last.mean) / last.std, output_hidden_states=True).hidden_states
        assert torch.allclose(last(batch), F.normalize(hidden[-1][:, 1:], dim=-1).flatten(1) / 4, atol=1e-6)
        assert not torch.allclose(last(batch), load_image_encoder(str(tiny_clip_path), embedding="patch_tokens")(batch))
    layers = last.vision.config.num_hidden_layers
    for bad in (layers + 1, -(layers + 2)):
        with pytest.raises(ModelLoadError, match=f"model.feature_layer {bad} is no hidden state of a {layers}-layer"):
            load_image_encoder(str(tiny_clip_path), embedding="patch_tokens", feature_layer=bad)
    with pytest.raises(ConfigError, match="model.feature_layer is read only with model.embedding patch_tokens"):
        load_config(None, ["--model.feature_layer", "-1"])
    assert load_config(None, ["--model.embedding", "patch_tokens", "--model.feature_layer", "-1"]).model.feature_layer == -1


def test_missing_weights_are_an_error(bare_vision_path, tiny_clip_path, tmp_path):
    """A checkpoint lacking a weight (here: a CLIPVisionModel folder claiming a projection) is refused."""
    import shutil

    folder = tmp_path / "claims_projection"
    shutil.copytree(bare_vision_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["CLIPVisionModelWithProjection"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="misses the weights visual_projection.weight"):
        load_image_encoder(str(folder))
    from safetensors.torch import load_file, save_file

    full = tmp_path / "full_missing"
    shutil.copytree(tiny_clip_path, full)
    weights = load_file(full / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("text_projection")}, full / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="text_projection.weight"):
        load_image_encoder(str(full))


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["pooled", "patch_tokens"])
def test_train_cli_on_a_clip_vision_model(bare_vision_path, tmp_path, png_folder, embedding):
    from transformers import CLIPVisionModel

    from aft_hf.cli import main
    from aft_hf.config import load_config

    rc = main(["train", "--model.name_or_path", str(bare_vision_path), "--data.dataset", str(png_folder),
               "--output_dir", str(tmp_path / "run"), "--optim.batch_size", "4", "--max_steps", "2",
               "--warmup_steps", "0", "--attack.steps", "1", "--logging.report_to", "none",
               "--model.embedding", embedding])
    assert rc == 0
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["CLIPVisionModel"]
    assert load_config(final / "aft_config.yaml").model.embedding == embedding
    tuned, base = CLIPVisionModel.from_pretrained(final), CLIPVisionModel.from_pretrained(bare_vision_path)
    assert set(tuned.state_dict()) == set(base.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))


def test_unknown_embedding_is_a_one_line_cli_error(capsys):
    from aft_hf.cli import main

    assert main(["train", "--model.embedding", "cls", "--print-config"]) == 2
    assert "model.embedding: unknown value 'cls'" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_is_loaded_trained_and_exported_in_fp32(tiny_clip_path, tmp_path, png_folder, dtype):
    """A VLM's tower is saved in fp16 or bf16, and transformers loads a checkpoint in its saved dtype: trained so,
    AdamW wrecked fp16 weights (changes of 0.5 at lr 1e-5) and left bf16 ones unchanged, and a full fp16 CLIP
    crashed on a dtype mismatch. Every checkpoint is loaded, trained and exported in fp32."""
    from aft_hf.cli import main
    from aft_hf.explain.targets import load_text_tower

    half = tmp_path / "half"
    CLIPModel.from_pretrained(tiny_clip_path).to(dtype).save_pretrained(half)
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "special_tokens_map.json"):
        if (tiny_clip_path / name).is_file():
            (half / name).write_bytes((tiny_clip_path / name).read_bytes())
    encoder, text = load_image_encoder(str(half)), load_text_tower(str(half))
    assert {p.dtype for p in [*encoder.parameters(), *text.parameters()]} == {torch.float32}
    scores = F.normalize(encoder(torch.rand(2, 3, 32, 32)), dim=-1) @ text.class_embeddings(["a", "b"]).T
    assert torch.isfinite(scores).all()
    assert torch.equal(text(["a photo of a b."]), text.encode(["a photo of a b."]))  # a module called on prompts
    rc = main(["train", "--model.name_or_path", str(half), "--data.dataset", str(png_folder), "--output_dir",
               str(tmp_path / "run"), "--optim.batch_size", "4", "--max_steps", "3", "--warmup_steps", "1",
               "--lr", "1e-5", "--attack.steps", "1", "--logging.report_to", "none"])
    assert rc == 0
    base, tuned = CLIPModel.from_pretrained(half), CLIPModel.from_pretrained(tmp_path / "run" / "final")
    assert {p.dtype for p in tuned.parameters()} == {torch.float32}
    changes = [(t.float() - b.float()).abs().max().item() for (name, t), b in
               zip(tuned.vision_model.state_dict().items(), base.vision_model.state_dict().values())
               if t.is_floating_point()]
    # the saved weights are exact in fp32, so a change is the updates alone: 3 Adam steps at lr <= 1e-5 move a
    # weight by at most about 3e-5 (an early Adam step is lr * sign(grad) at most, with bias correction)
    assert max(changes) < 5e-5
    assert sum(c > 0 for c in changes) > len(changes) // 2  # the updates were not rounded away
