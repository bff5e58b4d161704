"""``aft-hf explain``'s figure: each model's maps over that model's own view of the images, and the target named."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aft_hf.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """An 80 x 32 image with a blue disc at its left end: a centre crop cuts the disc away, a squash keeps it."""
    arr = np.full((32, 80, 3), 255, np.uint8)
    yy, xx = np.mgrid[:32, :80]
    arr[(yy - 16) ** 2 + (xx - 10) ** 2 < 64] = (0, 0, 255)
    path = tmp_path_factory.mktemp("odd") / "d.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def siglip_path(tmp_path_factory):
    from aft_hf.model import save_tiny_siglip

    return save_tiny_siglip(tmp_path_factory.mktemp("sig") / "tinysig")


@pytest.fixture
def drawn(monkeypatch):
    """What the CLI hands to ``attribution_grid`` (the figure is still drawn)."""
    import aft_hf.figures as figures

    calls, real = [], figures.attribution_grid

    def spy(images, maps, out, **kwargs):
        calls.append({"images": images, "maps": maps, **kwargs})
        return real(images, maps, out, **kwargs)

    monkeypatch.setattr(figures, "attribution_grid", spy)
    return calls


def _view(model, image):
    from aft_hf.data.images import image_geometry, load_images
    from aft_hf.model import load_image_encoder

    return load_images([image], image_geometry(load_image_encoder(str(model))))


def test_each_model_is_drawn_over_its_own_view_of_the_image(tiny_clip_path, siglip_path, wide_image, tmp_path, drawn):
    """CLIP centre-crops, SigLIP squashes: the SigLIP maps must not be drawn over CLIP's crop (they were)."""
    out = tmp_path / "figs"
    assert main(["explain", "--model", str(tiny_clip_path), "--model", str(siglip_path), "--images", str(wide_image),
                 "--labels", "blue circle", "--methods", "saliency", "--out", str(out)]) == 0
    (call,) = drawn
    crop, squash = _view(tiny_clip_path, wide_image), _view(siglip_path, wide_image)
    assert (crop - squash).abs().max() > 0.5  # the disc is in one view only
    assert set(call["images"]) == {"model", "tinysig"}
    assert torch.equal(call["images"]["model"], crop) and torch.equal(call["images"]["tinysig"], squash)
    # the figure names methods as evaluate's figures do; maps.pt keeps the registry names
    assert list(call["maps"]["tinysig"]) == ["Simple Gradient"] and list(call["maps"]["model"]) == ["Simple Gradient"]
    saved = torch.load(out / "maps.pt")
    assert torch.equal(saved["tinysig / saliency"], call["maps"]["tinysig"]["Simple Gradient"])
    geometries = json.loads((out / "explain.json").read_text())["image_geometries"]
    assert "centre" not in geometries["tinysig"] and geometries["tinysig"] != geometries["model"]


def test_models_that_see_images_alike_share_one_image_column(tiny_clip_path, wide_image, tmp_path, drawn):
    out = tmp_path / "figs"
    assert main(["explain", "--model", str(tiny_clip_path), "--model", str(tiny_clip_path), "--images",
                 str(wide_image), "--labels", "blue circle", "--methods", "saliency", "--out", str(out)]) == 0
    (call,) = drawn
    assert torch.equal(call["images"], _view(tiny_clip_path, wide_image))
    assert list(call["maps"]) == ["model / Simple Gradient", "model#2 / Simple Gradient"]


@pytest.mark.parametrize("target", ["caption", "reference"])
def test_the_figure_names_a_caption_or_reference_image(tiny_clip_path, wide_image, tmp_path, drawn, target):
    extra = ["--caption", "a blue disc"] if target == "caption" else ["--reference-image", str(wide_image)]
    assert main(["explain", "--model", str(tiny_clip_path), "--images", str(wide_image), "--methods", "saliency",
                 *extra, "--out", str(tmp_path / "figs")]) == 0
    (call,) = drawn
    assert ("caption 'a blue disc'" if target == "caption" else f"reference image {wide_image}") in call["title"]


def test_run_again_into_the_same_out_lists_what_it_wrote_and_keeps_the_users_files(tiny_clip_path, wide_image,
                                                                                     tmp_path):
    from aft_hf.outputs import RESULTS_MANIFEST

    out = tmp_path / "figs"
    args = ["explain", "--model", str(tiny_clip_path), "--images", str(wide_image), "--labels", "blue circle",
            "--methods", "saliency", "--out", str(out)]
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    (out / "old_figure.png").write_bytes(b"")  # as if an earlier aft-hf run had written it
    manifest = json.loads((out / RESULTS_MANIFEST).read_text())
    assert manifest["writer"] == "aft-hf explain" and set(manifest["entries"]) >= {"explain.json", "maps.pt"}
    (out / RESULTS_MANIFEST).write_text(json.dumps({**manifest, "entries": [*manifest["entries"], "old_figure.png"]}))
    assert main(args) == 0
    assert (out / "notes.txt").is_file() and not (out / "old_figure.png").exists()
