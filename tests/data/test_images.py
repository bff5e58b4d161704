"""Data: every image mode becomes RGB in [0, 1]; a corrupt file is skipped and counted; errors are clear."""

import numpy as np
import pytest
import torch
from PIL import Image

from aft_hf.config import DataConfig
from aft_hf.data import DataError, build_dataloader, load_image_dataset, preprocess, to_rgb
from aft_hf.data.images import resize_center_crop
from tests.image_helpers import write_mixed_folder


def test_modes_convert_to_rgb():
    assert to_rgb(Image.new("L", (4, 4), 100)).getpixel((0, 0)) == (100, 100, 100)
    # alpha composited on white: a fully transparent pixel becomes white, an opaque one keeps its colour
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    out = to_rgb(rgba)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (10, 20, 30)
    # 16-bit data is scaled, not saturated by a plain convert
    deep = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    assert to_rgb(deep).getpixel((0, 0)) == (128, 128, 128)
    cmyk = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_preprocess_resizes_and_crops_without_normalising():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    assert resize_center_crop(img, 32).size == (32, 32)
    x = preprocess(img, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_corrupt_file_is_skipped_and_counted(tmp_path, caplog):
    folder = write_mixed_folder(tmp_path)
    cfg = DataConfig(dataset="imagefolder", data_dir=str(folder))
    loader = build_dataloader(cfg, image_size=32, batch_size=4, seed=0)
    batches = list(loader)
    assert all(b["pixel_values"].shape == (4, 3, 32, 32) for b in batches)  # skipping keeps batches full
    assert sum(int(b["skipped"]) for b in batches) == 1
    assert "corrupt.png" in caplog.text


def test_local_folder_path_is_an_imagefolder(png_folder):
    ds = load_image_dataset(DataConfig(dataset=str(png_folder), max_samples=5))
    assert len(ds) == 5


def test_missing_column_is_named(png_folder):
    with pytest.raises(DataError, match="no column 'img'.*image"):
        load_image_dataset(DataConfig(dataset=str(png_folder), image_column="img"))


def test_offline_hub_id_gives_clear_error():
    with pytest.raises(DataError, match="(?s)could not load dataset 'ILSVRC/imagenet-1k'.*OFFLINE"):
        load_image_dataset(DataConfig(dataset="ILSVRC/imagenet-1k", streaming=True))


def test_streaming_split_across_processes_and_resumable(png_folder):
    cfg = DataConfig(dataset=str(png_folder), streaming=True, shuffle_buffer=8)
    seen = []
    for rank in range(2):
        loader = build_dataloader(cfg, 32, batch_size=2, seed=0, rank=rank, world_size=2)
        seen.append(torch.cat([b["pixel_values"] for b in loader]))
    assert len(seen[0]) + len(seen[1]) == 16
    assert not any(torch.equal(a, b) for a in seen[0] for b in seen[1])  # disjoint shards
    full = torch.cat([b["pixel_values"] for b in build_dataloader(cfg, 32, 2, seed=0)])
    resumed = torch.cat([b["pixel_values"] for b in build_dataloader(cfg, 32, 2, seed=0, skip_examples=6)])
    assert torch.equal(full[6:], resumed)


def test_too_small_dataset(png_folder):
    with pytest.raises(DataError, match="fewer than one global batch"):
        build_dataloader(DataConfig(dataset=str(png_folder)), 32, batch_size=64, seed=0)


@pytest.mark.slow
def test_builtin_shapes_dataset():
    ds = load_image_dataset(DataConfig(dataset="builtin:shapes"))
    assert len(ds) == 256
    with pytest.raises(ValueError, match="unknown builtin dataset"):
        load_image_dataset(DataConfig(dataset="builtin:nope"))


def test_folder_without_images_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images for split 'train' in the folder"):
        load_image_dataset(DataConfig(dataset=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="no local folder named 'nodir' either"):
        load_image_dataset(DataConfig(dataset="nodir"))
