"""Any resolution: a 48-px CLIP (patch 8) loaded, trained, evaluated and exported at 64 px, the position
embeddings interpolated once, and from_pretrained, the processor and the zero-shot pipeline agreeing."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPModel, CLIPVisionModel, pipeline

from aft_hf.cli import main
from aft_hf.config import ConfigError, load_config
from aft_hf.model import export_pretrained, load_image_encoder, normalize_pixels, save_tiny_clip
from aft_hf.resolution import ResolutionError, interpolate_position_embedding
from aft_hf.train import train
from tests.image_helpers import write_png_folder


@pytest.fixture(scope="module")
def clip48(tmp_path_factory):
    """A tiny full CLIPModel of odd geometry: 48 px, patch 8 (a 6x6 grid)."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip48") / "model", seed=3, image_size=48, patch_size=8)


@pytest.mark.slow
def test_resized_encoder_is_transformers_interpolation_done_once(clip48):
    torch.manual_seed(0)
    original = load_image_encoder(str(clip48))
    resized = load_image_encoder(str(clip48), image_size=64)
    assert original.image_size == 48 and resized.image_size == 64
    emb = resized.vision.vision_model.embeddings
    assert resized.vision.config.image_size == 64
    assert emb.position_embedding.weight.shape == (1 + 8 * 8, 32) and emb.position_ids.shape == (1, 65)
    assert emb.position_embedding.weight.requires_grad
    pixels = torch.rand(2, 3, 64, 64)
    ours = resized.vision(pixel_values=normalize_pixels(pixels)).image_embeds  # no per-forward interpolation
    theirs = original.vision(pixel_values=normalize_pixels(pixels), interpolate_pos_encoding=True).image_embeds
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert resized(pixels).shape == (2, 32)
    assert resized.image_processor.crop_size.height == 64
    assert resized.image_processor.size.shortest_edge == 64
    # the checkpoint's own size changes nothing: same table, same numbers
    same = load_image_encoder(str(clip48), image_size=48)
    assert torch.equal(same.vision.vision_model.embeddings.position_embedding.weight,
                       original.vision.vision_model.embeddings.position_embedding.weight)


def test_interpolation_keeps_the_class_position_and_a_constant_grid():
    table = torch.cat([torch.full((1, 4), 7.0), torch.ones(9, 4) * torch.arange(4.0)])
    out = interpolate_position_embedding(table, 3, 5)
    assert out.shape == (26, 4) and torch.equal(out[0], table[0])
    torch.testing.assert_close(out[1:], torch.ones(25, 4) * torch.arange(4.0))


def test_a_size_off_the_patch_grid_is_refused_in_one_line(clip48):
    with pytest.raises(ResolutionError, match=r"model.image_size 60 is not a positive multiple of the patch "
                                              r"size 8 \(try 64\)") as e:
        load_image_encoder(str(clip48), image_size=60)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.image_size: must be > 0"):
        load_config(None, ["--model.image_size", "0"])


def test_vision_only_export_at_the_new_size(clip48, tmp_path):
    enc = load_image_encoder(str(clip48))
    bare = tmp_path / "bare"
    CLIPVisionModel.from_pretrained(clip48).save_pretrained(bare)
    enc.image_processor.save_pretrained(bare)
    resized = load_image_encoder(str(bare), image_size=64)
    out = export_pretrained(resized, tmp_path / "out")
    model, info = CLIPVisionModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and model.config.image_size == 64
    assert json.loads((out / "preprocessor_config.json").read_text())["crop_size"] == {"height": 64, "width": 64}


def _pipeline_logits(folder, image, labels):
    """The zero-shot pipeline's scores and the same scores recomputed from load_image_encoder on the
    processor's pixels (un-normalised back to [0, 1]) and the exported text tower."""
    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    scores = {s["label"]: s["score"] for s in classifier(image, candidate_labels=labels)}
    processed = classifier.image_processor(image, return_tensors="pt")["pixel_values"]
    mean = torch.tensor(classifier.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(classifier.image_processor.image_std).view(1, 3, 1, 1)
    encoder = load_image_encoder(str(folder))
    clip = CLIPModel.from_pretrained(folder)
    text = classifier.tokenizer([f"This is a photo of {c}." for c in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        image_emb = encoder(processed * std + mean)
        text_emb = torch.nn.functional.normalize(clip.get_text_features(**text).pooler_output, dim=-1)
        ours = (clip.logit_scale.exp() * image_emb @ text_emb.T).softmax(-1)[0]
    return processed.shape, scores, dict(zip(labels, ours.tolist()))


@pytest.mark.slow
def test_train_at_64_px_exports_one_consistent_model(clip48, tmp_path):
    from PIL import Image

    torch.set_num_threads(1)
    data = write_png_folder(tmp_path / "imgs", 8, size=56)
    cfg = load_config(None, [
        "--model.name_or_path", str(clip48), "--model.image_size", "64", "--data.dataset", str(data),
        "--output_dir", str(tmp_path / "out"), "--optim.batch_size", "4", "--max_steps", "2", "--warmup_steps", "0",
        "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "100"])
    final = train(cfg)
    config = json.loads((final / "config.json").read_text())
    assert config["vision_config"]["image_size"] == 64 and config["vision_config"]["patch_size"] == 8
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        assert f.get_slice("vision_model.embeddings.position_embedding.weight").get_shape() == [65, 32]
    processor = json.loads((final / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 64, "width": 64} and processor["size"] == {"shortest_edge": 64}
    model, info = CLIPModel.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert load_image_encoder(str(final)).image_size == 64
    # the text tower is the base's, the vision tower was trained at 64 px
    base = CLIPModel.from_pretrained(clip48)
    assert torch.equal(model.text_model.embeddings.token_embedding.weight,
                       base.text_model.embeddings.token_embedding.weight)
    image = Image.fromarray((torch.rand(70, 90, 3) * 255).byte().numpy())
    shape, scores, ours = _pipeline_logits(final, image, ["a red circle", "a blue star", "a green square"])
    assert tuple(shape) == (1, 3, 64, 64)
    for label in scores:
        assert scores[label] == pytest.approx(ours[label], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_cli_evaluate_and_explain_at_another_size(clip48, tmp_path, capsys):
    from aft_hf.data import write_shapes_imagefolder

    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=4, size=70)
    rc = main(["evaluate", "--model", str(clip48), "--image-size", "64", "--dataset", str(data),
               "--max-samples", "4", "--metrics", "zeroshot", "--methods", "saliency", "--out", str(tmp_path / "ev")])
    assert rc == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["metrics"]["zeroshot_top1"] >= 0
    rc = main(["explain", "--model", str(clip48), "--image-size", "64", "--images", str(data), "--labels", "circle",
               "--methods", "saliency", "gradcam", "attention", "--out", str(tmp_path / "maps")])
    assert rc == 0 and any((tmp_path / "maps").glob("*.png"))
    rc = main(["evaluate", "--model", str(clip48), "--image-size", "60", "--dataset", str(data),
               "--metrics", "zeroshot", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--image-size 60 is not a positive multiple of the patch size 8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_bad_image_size_option_is_named_as_the_option_before_any_weights_load(clip48, tmp_path, capsys, monkeypatch):
    import aft_hf.explain.loading as loading

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before --image-size was checked")

    from PIL import Image

    Image.new("RGB", (48, 48)).save(tmp_path / "one.png")
    monkeypatch.setattr(loading, "load_image_encoder", no_weights)
    rc = main(["explain", "--model", str(clip48), "--image-size", "-8", "--images", str(tmp_path), "--labels", "circle",
               "--out", str(tmp_path / "maps")])
    err = capsys.readouterr().err
    assert rc == 2 and "--image-size -8 is not a positive multiple of the patch size 8 (try 8)" in err
    assert "model.image_size" not in err and not (tmp_path / "maps").exists()


def test_patch_tokens_follow_the_new_grid(clip48):
    enc = load_image_encoder(str(clip48), image_size=64, embedding="patch_tokens")
    assert enc(torch.rand(1, 3, 64, 64)).shape == (1, 8 * 8 * 32)  # 64 patch tokens of width 32, CLS dropped


def test_llava_recipe_is_fare4_on_the_336_px_checkpoint():
    cfg = load_config("fare4_vit_l14_336")
    assert cfg.model.name_or_path == "openai/clip-vit-large-patch14-336" and cfg.model.image_size is None
    assert (cfg.attack.norm, cfg.attack.eps, cfg.attack.steps) == ("linf", 4.0, 10)
    assert cfg.model.embedding == "pooled" and cfg.model.output_normalize is False


@pytest.mark.slow
def test_open_clip_export_at_the_new_size(open_clip, clip48, tmp_path, capsys):
    """A 48-px CLIP exported at 64 px -> export-openclip -> open_clip: a 64-px model, same image embedding."""
    final = export_pretrained(load_image_encoder(str(clip48), image_size=64), tmp_path / "final")
    out = tmp_path / "oc" / "clip64.safetensors"
    assert main(["export-openclip", str(final), "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["vision_cfg"]["image_size"] == 64
    open_clip.add_model_config(out.with_suffix(".json"))
    oc = open_clip.create_model("clip64", pretrained=str(out)).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hf = CLIPModel.from_pretrained(final).get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(oc.encode_image(pixels), hf, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resume_at_the_new_size_and_refuse_another(clip48, tmp_path):
    torch.set_num_threads(1)
    data = write_png_folder(tmp_path / "imgs", 8, size=56)

    def cfg(steps, *extra):
        return load_config(None, [
            "--model.name_or_path", str(clip48), "--model.image_size", "64", "--data.dataset", str(data),
            "--output_dir", str(tmp_path / "out"), "--optim.batch_size", "4", "--max_steps", str(steps),
            "--warmup_steps", "0", "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "1",
            *extra])

    train(cfg(2))
    train(cfg(3, "--checkpoint.resume_from_checkpoint", "latest"))  # the saved 65-row position table loads
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["steps"] == 3
    with pytest.raises(ConfigError, match="model.image_size"):
        train(cfg(4, "--checkpoint.resume_from_checkpoint", "latest", "--model.image_size", "56"))


def test_processor_sizes_scale_with_the_input():
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    from aft_hf.resolution import resize_image_processor

    clip = CLIPImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    resize_image_processor(clip, 224, 448)
    assert clip.size.shortest_edge == 512 and (clip.crop_size.height, clip.crop_size.width) == (448, 448)
    siglip = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    resize_image_processor(siglip, 384, 448)
    assert (siglip.size.height, siglip.size.width) == (448, 448)
