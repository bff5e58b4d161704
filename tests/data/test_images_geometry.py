"""Images are prepared with the checkpoint's own image processor (resize and crop), everywhere: a processor
that squashes (do_center_crop false) is not centre-cropped; the result equals transformers' own pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from aft_hf.config import DataConfig
from aft_hf.data import ImageGeometry, build_dataloader, image_geometry, load_images, load_readable_images
from aft_hf.data.images import GeometryError
from aft_hf.evaluate.data import load_labelled_images
from aft_hf.model import load_image_encoder

SQUASH = dict(size={"height": 32, "width": 32}, do_center_crop=False)


@pytest.fixture(scope="module")
def squashing_model(tmp_path_factory, tiny_clip_path):
    """The tiny vision tower with a processor that squashes the whole image to 32 x 32 (no crop)."""
    enc = load_image_encoder(str(tiny_clip_path))
    path = tmp_path_factory.mktemp("squash") / "model"
    enc.vision.save_pretrained(path)
    CLIPImageProcessorPil(**SQUASH).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """A 64 x 40 image whose left and right thirds differ from its middle (a centre crop drops them)."""
    arr = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    path = tmp_path_factory.mktemp("wide") / "cls" / "wide.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    (path.parent.parent / "metadata.jsonl").write_text('{"file_name": "cls/wide.png", "label": 0}\n')
    return path


def _transformers_pixels(processor, path) -> torch.Tensor:
    """transformers' own preprocessing, rescaled to [0, 1] and not normalised (aft_hf normalises in the model)."""
    out = processor(images=Image.open(path).convert("RGB"), do_normalize=False, return_tensors="np")["pixel_values"]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def test_squashing_processor_is_followed_by_every_reader(squashing_model, wide_image):
    """The issue: do_center_crop false was centre-cropped anyway (0.048 embedding difference)."""
    encoder = load_image_encoder(str(squashing_model))
    geometry = image_geometry(encoder)
    want = _transformers_pixels(encoder.image_processor, wide_image)
    assert torch.allclose(load_images([wide_image], geometry), want, atol=1e-6)  # explain, --reference-image
    assert torch.allclose(load_readable_images([wide_image], geometry)[0], want, atol=1e-6)  # explain --images
    labelled = load_labelled_images("imagefolder", geometry, data_dir=str(wide_image.parent.parent), progress=False)
    assert torch.allclose(labelled.images, want, atol=1e-6)  # evaluate
    loader = build_dataloader(DataConfig(dataset="imagefolder", data_dir=str(wide_image.parent.parent)), geometry, 1, 0)
    assert torch.allclose(next(iter(loader))["pixel_values"], want, atol=1e-6)  # training
    cropped = load_images([wide_image], 32)  # what the fixed CLIP geometry gives: another image
    assert not torch.allclose(cropped, want, atol=0.05)
    # the embedding equals the transformers pipeline's on the same image
    hf = CLIPVisionModelWithProjection.from_pretrained(squashing_model).eval()
    pixel_values = encoder.image_processor(images=Image.open(wide_image).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(hf(pixel_values=pixel_values["pixel_values"]).image_embeds, dim=-1)
        ours = encoder.eval()(load_images([wide_image], geometry))
    assert (ours - ref).abs().max() < 1e-5


def test_default_clip_processor_matches_transformers(tiny_clip_path, wide_image):
    encoder = load_image_encoder(str(tiny_clip_path))
    want = _transformers_pixels(encoder.image_processor, wide_image)
    assert torch.allclose(load_images([wide_image], image_geometry(encoder)), want, atol=1e-6)


def test_train_eval_images_follow_the_processor(squashing_model, wide_image):
    from accelerate import PartialState

    from aft_hf.config import load_config
    from aft_hf.train_eval import load_eval_images

    PartialState()  # its logger is accelerate's

    encoder = load_image_encoder(str(squashing_model))
    cfg = load_config(None, ["--data.dataset", "imagefolder", "--data.data_dir", str(wide_image.parent.parent)])
    images = load_eval_images(cfg, image_geometry(encoder))[0]
    assert torch.allclose(images, _transformers_pixels(encoder.image_processor, wide_image), atol=1e-6)


def test_masks_follow_their_image_geometry():
    geometry = ImageGeometry(32, CLIPImageProcessorPil(**SQUASH))
    mask = Image.fromarray(np.pad(np.full((40, 32), 255, np.uint8), ((0, 0), (0, 32))), mode="L")  # left half
    out = np.asarray(geometry(mask))
    assert out.shape == (32, 32) and (out[:, :15] > 128).all() and (out[:, 17:] < 128).all()


def test_a_processor_that_cannot_give_the_model_size_is_one_error():
    with pytest.raises(GeometryError, match="gives 48x32 images but the model takes 32x32"):
        ImageGeometry(32, CLIPImageProcessorPil(size={"height": 32, "width": 48}, do_center_crop=False))
    assert ImageGeometry(32) == ImageGeometry.of(32) != ImageGeometry(32, CLIPImageProcessorPil(**SQUASH))
