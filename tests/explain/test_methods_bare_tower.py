"""Every explain method on a bare CLIPVisionModel folder (the LLaVA-style tower, no projection)."""

import json

import pytest
import torch
from transformers import CLIPVisionModel

from aft_hf.cli import main
from aft_hf.data import write_shapes_imagefolder
from aft_hf.explain import METHODS, Explainer, ExplainError
from aft_hf.model import load_image_encoder


@pytest.fixture(scope="module")
def bare_tower(tmp_path_factory, tiny_clip_path):
    """The tiny CLIP's vision tower saved as a bare CLIPVisionModel (architectures: CLIPVisionModel)."""
    enc = load_image_encoder(str(tiny_clip_path))
    bare = CLIPVisionModel(enc.vision.config)
    bare.load_state_dict(enc.vision.vision_model.state_dict())
    path = tmp_path_factory.mktemp("bare") / "tower"
    bare.save_pretrained(path)
    enc.image_processor.save_pretrained(path)
    return path


@pytest.mark.slow
def test_every_method_on_a_bare_tower(bare_tower):
    """The issue: AttributeError 'CLIPVisionModel' object has no attribute 'vision_model' (Grad-CAM)."""
    encoder = load_image_encoder(str(bare_tower))
    assert type(encoder.vision) is CLIPVisionModel
    images = torch.rand(2, 3, encoder.image_size, encoder.image_size)
    with torch.no_grad():
        target = torch.nn.functional.normalize(encoder(images[:1]), dim=-1)
    for method in METHODS:
        maps = Explainer(encoder, method, progress=False, n_steps=4, nt_samples=2).attribute(images, target)
        assert maps.shape == (2, 1, encoder.image_size, encoder.image_size) and torch.isfinite(maps).all(), method


def test_gradcam_layer_paths_on_both_layouts(bare_tower, tiny_clip_path):
    bare, projected = load_image_encoder(str(bare_tower)), load_image_encoder(str(tiny_clip_path))
    for encoder in (bare, projected):
        for layer in (None, "penultimate", "vision_model.encoder.layers.0"):
            assert isinstance(Explainer(encoder, "gradcam", layer=layer).impl.resolve_layer(), torch.nn.Module)
    assert Explainer(bare, "gradcam", layer="encoder.layers.0").impl.resolve_layer() is bare.vision.encoder.layers[0]
    with pytest.raises(ExplainError, match="not found"):
        Explainer(bare, "gradcam", layer="no.such.layer").impl.resolve_layer()


@pytest.mark.slow
def test_cli_explain_with_reference_image_on_a_bare_tower(bare_tower, tmp_path):
    images = write_shapes_imagefolder(tmp_path / "imgs", num_images=2, size=40)
    ref = next(images.rglob("*.png"))
    out = tmp_path / "figs"
    rc = main(["explain", "--model", str(bare_tower), "--images", str(images), "--reference-image", str(ref),
               "--out", str(out)])  # default methods: saliency, gradcam, attention
    assert rc == 0
    summary = json.loads((out / "explain.json").read_text())
    assert "reference image" in summary["target"]
