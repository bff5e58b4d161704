"""Attribution methods: known answers on hand-built models, hand-set attention, bad input, the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from aft_hf.explain import (
    Explainer,
    ExplainError,
    TemplateError,
    attention_rollout,
    check_images,
    check_template,
    cls_attention,
    load_text_tower,
    postprocess,
)
from aft_hf.figures import unnormalize
from aft_hf.model import CLIP_MEAN, CLIP_STD, ModelLoadError
from tests.explain_helpers import RegionViT, region_mask

pytestmark = pytest.mark.usefixtures("single_thread")

GRADIENT = ("saliency", "integrated_gradients", "smoothgrad")


@pytest.fixture(scope="module")
def region_setup():
    mask = region_mask()
    torch.manual_seed(1)
    return RegionViT(mask), mask, torch.rand(4, 3, 32, 32), F.normalize(torch.randn(16), dim=0)


def _share(maps, mask):
    return ((maps * mask).flatten(1).sum(1) / maps.flatten(1).sum(1)).min().item()


@pytest.mark.parametrize("method", GRADIENT)
def test_gradient_methods_put_their_mass_on_the_only_region_the_model_sees(region_setup, method):
    enc, mask, x, t = region_setup
    maps = Explainer(enc, method, progress=False, n_steps=8, nt_samples=4).attribute(x, t)
    assert maps.shape == (4, 1, 32, 32)
    assert _share(maps, mask) >= 0.99  # stated threshold: 99% of the mass inside the region


def test_gradcam_on_a_vit_is_nonzero_and_lands_on_the_region(region_setup):
    enc, mask, x, t = region_setup
    explainer = Explainer(enc, "gradcam", progress=False)
    # Grad-CAM's ReLU zeroes a map whose class evidence is negative; flipping the target flips the sign of
    # the pre-ReLU map, so for every image at least one of t, -t gives a non-zero map.
    pos, neg = explainer.attribute(x, t), explainer.attribute(x, -t)
    assert ((pos.flatten(1).amax(1) > 0) | (neg.flatten(1).amax(1) > 0)).all()
    maps = torch.cat([pos, neg])
    maps = maps[maps.flatten(1).amax(1) > 0]
    half_patch = F.max_pool2d(mask, 9, stride=1, padding=4)  # bilinear upsampling spreads half a patch
    assert _share(maps, half_patch) >= 0.99
    assert _share(maps, mask) >= 0.75
    peaks = maps.flatten(1).argmax(1)
    assert mask.flatten()[peaks].all()


def test_gradcam_on_the_last_block_output_is_zero_but_default_layer_is_not(tiny_encoder, batch):
    t = F.normalize(torch.randn(tiny_encoder.vision.config.projection_dim), dim=0)
    last = tiny_encoder.vision.vision_model.encoder.layers[-1]
    raw_last = Explainer(tiny_encoder, "gradcam", postprocess=False, layer=last, progress=False).attribute(batch, t)
    raw_default = Explainer(tiny_encoder, "gradcam", postprocess=False, progress=False).attribute(batch, t)
    raw_pen = Explainer(tiny_encoder, "gradcam", postprocess=False, layer="penultimate", progress=False).attribute(batch, t)
    assert raw_last.abs().max() == 0  # the pooled output reads only CLS: patch tokens get no gradient
    assert raw_default.abs().max() > 0 and raw_pen.abs().max() > 0


def test_attention_rollout_of_a_hand_set_pattern():
    eye = torch.eye(5).view(1, 1, 5, 5)
    layer2 = torch.eye(5)
    layer2[0] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])  # CLS attends only to patch 2 (token index 2)
    layer1 = torch.eye(5)
    layer1[2] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])  # patch 2 attends only to patch 3
    atts = [layer1.view(1, 1, 5, 5).repeat(1, 2, 1, 1), layer2.view(1, 1, 5, 5).repeat(1, 2, 1, 1)]
    # residual 0.5: CLS row = 0.5 CLS + 0.5 (0.5 p2 + 0.5 p3) -> patches [0, 0.25, 0.25, 0]
    assert torch.allclose(attention_rollout(atts), torch.tensor([[0.0, 0.25, 0.25, 0.0]]))
    assert torch.allclose(cls_attention(atts), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(attention_rollout([eye]), torch.zeros(1, 4))  # CLS keeps all flow to itself
    heads = torch.stack([layer2, torch.eye(5)]).unsqueeze(0)  # heads averaged: half to patch 2
    assert torch.allclose(cls_attention([heads]), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))


def test_attention_methods_use_eager_and_restore_sdpa(tiny_encoder, batch):
    vision = tiny_encoder.vision
    assert vision.config._attn_implementation == "sdpa"
    maps = Explainer(tiny_encoder, "attention", postprocess=False, progress=False).attribute(batch)
    assert vision.config._attn_implementation == "sdpa"
    vision.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            atts = vision(pixel_values=(batch - tiny_encoder.mean) / tiny_encoder.std, output_attentions=True).attentions
    finally:
        vision.set_attn_implementation("sdpa")
    expected = F.interpolate(cls_attention(atts).view(-1, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(maps, expected, atol=1e-6)
    roll = Explainer(tiny_encoder, "rollout", progress=False).attribute(batch)
    assert roll.shape == (4, 1, 32, 32) and roll.min() >= 0 and roll.max() <= 1


def test_batching_does_not_change_the_maps(tiny_encoder, batch):
    t = F.normalize(torch.randn(4, tiny_encoder.vision.config.projection_dim), dim=-1)
    one = Explainer(tiny_encoder, "saliency", batch_size=1, progress=False).attribute(batch, t)
    four = Explainer(tiny_encoder, "saliency", batch_size=4, progress=False).attribute(batch, t)
    assert torch.allclose(one, four, atol=1e-5)


def test_postprocess_abs_sum_clip_minmax():
    raw = torch.zeros(1, 3, 10, 10)
    raw[0, 0, 0, 0] = -100.0  # an outlier, clipped at the 99th percentile
    raw[0, 1, 5, 5] = 2.0
    raw[0, 2, 5, 5] = -2.0  # |.| then sum: 4 at (5, 5)
    out = postprocess(raw, clip_percentile=98)
    assert out.shape == (1, 1, 10, 10)
    assert out.max() == 1 and out.min() == 0
    assert out[0, 0, 5, 5] == 1 and out[0, 0, 0, 0] == 1  # both reach the clip level
    assert postprocess(torch.ones(1, 3, 4, 4)).abs().max() == 0  # constant map -> zeros, no NaN


def test_text_tower_embeddings_are_normalised_and_vision_only_needs_another(tiny_clip_path, tiny_vision_path):
    text = load_text_tower(str(tiny_clip_path))
    emb = text.class_embeddings(["red circle", "blue square"], ["a photo of a {}.", "a drawing of a {}."])
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(ModelLoadError, match="text tower"):
        load_text_tower(str(tiny_vision_path))


def test_bad_input_gives_clear_errors(tiny_encoder, batch):
    t = torch.randn(32)
    with pytest.raises(ExplainError, match="unknown attribution method 'lime'"):
        Explainer(tiny_encoder, "lime")
    with pytest.raises(TemplateError, match=r"exactly one '\{\}'"):
        check_template("a photo of a cat")
    with pytest.raises(ExplainError, match="mixed sizes"):
        check_images([torch.rand(3, 32, 32), torch.rand(3, 40, 32)])
    with pytest.raises(ExplainError, match="channels"):
        check_images(torch.rand(2, 4, 32, 32))
    with pytest.raises(ExplainError, match=r"\[0, 1\]"):
        check_images(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ExplainError, match="expects 32x32"):
        Explainer(tiny_encoder, "saliency", progress=False).attribute(torch.rand(1, 3, 40, 40), t)
    with pytest.raises(ExplainError, match="pass target="):
        Explainer(tiny_encoder, "saliency", progress=False).attribute(batch)
    with pytest.raises(ExplainError, match="target must have shape"):
        Explainer(tiny_encoder, "saliency", progress=False).attribute(batch, torch.randn(3, 32))
    gray = batch[:, :1]
    sal = Explainer(tiny_encoder, "saliency", progress=False)
    assert torch.allclose(sal.attribute(gray, t), sal.attribute(gray.expand(-1, 3, -1, -1), t))


def test_non_finite_pixels_are_refused(tiny_encoder, batch):
    """The [0, 1] range check never fails on NaN (every comparison with it is false): NaN would give NaN maps."""
    for bad in (float("nan"), float("inf")):
        images = batch.clone()
        images[0, 1, 3, 4] = bad
        with pytest.raises(ExplainError, match="1 pixel values are NaN or infinite"):
            Explainer(tiny_encoder, "saliency", progress=False).attribute(images, torch.randn(32))


@pytest.mark.parametrize("layer, output", [("vision_model.encoder", "BaseModelOutput"),
                                           ("vision_model.post_layernorm", r"\(4, 32\)")])
def test_a_gradcam_layer_that_gives_no_vit_tokens_is_named(tiny_encoder, batch, layer, output):
    """A whole encoder returns a ``BaseModelOutput`` (it raised AttributeError: no attribute 'dim'), the last norm
    the pooled (B, D) vector: one error names the layer, what it gives and which layers work."""
    explainer = Explainer(tiny_encoder, "gradcam", layer=layer, progress=False)
    with pytest.raises(ExplainError, match=rf"layer '{layer}' outputs {output}, not .* use a block") as info:
        explainer.attribute(batch, torch.randn(32))
    assert "\n" not in str(info.value) and "penultimate" in str(info.value)


def test_unnormalize_uses_clip_statistics():
    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(unnormalize((x - mean) / std), x, atol=1e-6)


@pytest.mark.slow
def test_cli_explain_writes_png_json_and_maps(tiny_clip_path, tiny_vision_path, tmp_path):
    from aft_hf.cli import main
    from aft_hf.data import write_shapes_imagefolder

    images = write_shapes_imagefolder(tmp_path / "imgs", num_images=3, size=40)
    out = tmp_path / "figs"
    rc = main(["explain", "--model", str(tiny_clip_path), "--model", str(tiny_clip_path), "--images", str(images),
               "--methods", "saliency", "gradcam", "attention", "--out", str(out)])
    assert rc == 0
    png = out / "explanations.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "explain.json").read_text())
    assert len(summary["images"]) == 3 and len(summary["seconds_per_image"]) == 6
    maps = torch.load(out / "maps.pt")
    assert all(v.shape == (3, 1, 32, 32) for v in maps.values())
    ref = next(images.rglob("*.png"))
    rc = main(["explain", "--model", str(tiny_vision_path), "--text-model", str(tiny_clip_path), "--images", str(images),
               "--methods", "saliency", "--out", str(tmp_path / "vision_only")])
    assert rc == 0 and (tmp_path / "vision_only" / "explanations.png").is_file()
    rc = main(["explain", "--model", str(tiny_vision_path), "--reference-image", str(ref), "--images", str(images),
               "--methods", "gradcam", "--out", str(tmp_path / "ref")])
    assert rc == 0 and "reference image" in json.loads((tmp_path / "ref" / "explain.json").read_text())["target"]
    bad = main(["explain", "--model", str(tiny_clip_path), "--images", str(images), "--prompt", "no slot",
                "--out", str(out)])
    assert bad == 2


def test_a_tokenizer_that_reads_every_class_alike_is_refused(tiny_clip_path, tmp_path, caplog, capsys):
    """A CLIP saved without its tokenizer files loads a tokenizer that reads every word as one unknown token:
    every class got the same embedding and zero-shot accuracy was chance, with no message."""
    import logging

    from PIL import Image
    from transformers import CLIPModel

    from aft_hf.cli import main
    from aft_hf.explain.targets import load_text_tower

    tower = load_text_tower(str(tiny_clip_path))
    with pytest.raises(ExplainError, match=r"all 2 classes the same embedding.*reads every prompt as the same tokens"):
        tower.class_embeddings(["0", "1"])  # neither is in the tiny vocabulary
    with caplog.at_level(logging.WARNING):
        tower.class_embeddings(["cat", "0", "1"])
    assert "the same text embedding, which zero-shot scores cannot tell apart: '0' = '1'" in caplog.text
    bare = tmp_path / "bare"
    CLIPModel.from_pretrained(tiny_clip_path).save_pretrained(bare)  # no tokenizer, no processor files
    images = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (images / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(images / cls / "0.png")
    assert main(["evaluate", "--model", str(bare), "--dataset", str(images), "--metrics", "zeroshot",
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("aft-hf evaluate: error: ") and "same embedding" in line
