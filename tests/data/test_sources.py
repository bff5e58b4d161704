"""Where a data set comes from: a local folder is told apart by what it holds, and read by the matching loader."""

import datasets
import pytest
import torch

from aft_hf.config import DataConfig
from aft_hf.data import build_dataloader
from aft_hf.data.errors import DataError
from aft_hf.data.sources import load_source, local_format
from tests.image_helpers import write_png_folder, write_webdataset_shards


def test_local_format_by_content(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"x": [1, 2, 3]}).save_to_disk(str(saved))
    tables = tmp_path / "tables" / "data"
    tables.mkdir(parents=True)
    datasets.Dataset.from_dict({"x": [1, 2]}).to_parquet(str(tables / "train-00000-of-00001.parquet"))
    images = write_png_folder(tmp_path / "images", 2)
    datasets.Dataset.from_dict({"file_name": ["a.png"]}).to_parquet(str(images / "metadata.parquet"))
    assert local_format(saved) == "saved"
    assert local_format(tmp_path / "tables") == "tables"
    assert local_format(images) == "imagefolder"  # metadata.parquet holds labels, it is not a table shard
    assert local_format(tmp_path / "empty") == "imagefolder"


def test_saved_and_table_folders_load_and_stream(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"x": [1, 2, 3]}).save_to_disk(str(saved))
    assert load_source(DataConfig(dataset=str(saved)))["x"] == [1, 2, 3]
    streamed = load_source(DataConfig(dataset=str(saved), streaming=True))
    assert isinstance(streamed, datasets.IterableDataset) and sorted(r["x"] for r in streamed) == [1, 2, 3]
    tables = tmp_path / "tables"
    tables.mkdir()
    datasets.Dataset.from_dict({"x": [4, 5]}).to_parquet(str(tables / "train-00000-of-00001.parquet"))
    assert load_source(DataConfig(dataset=str(tables)))["x"] == [4, 5]


def test_paths_that_cannot_be_a_data_set_are_named(tmp_path):
    (tmp_path / "file.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="is a file; give the folder that holds it"):
        load_source(DataConfig(dataset=str(tmp_path / "file.parquet")))
    with pytest.raises(DataError, match="there is no folder './no-such-folder'"):
        load_source(DataConfig(dataset="./no-such-folder"))
    for typo in ("world_sampels/", "data/world/sampels"):  # a trailing slash or two slashes: no Hub id looks so
        with pytest.raises(DataError, match=f"there is no folder '{typo}'"):
            load_source(DataConfig(dataset=typo))
    with pytest.raises(DataError, match="imagefolder needs data.data_dir"):
        load_source(DataConfig(dataset="imagefolder"))


def test_splits_inferred_from_file_names_are_reported(tmp_path, caplog):
    """30 photo*.png beside 10 train_*.png and 10 test_*.png: datasets trains on the 10 train_* only; a warning
    names the splits and the 30 images left out. Folders train/ and test/ leave none out: no warning."""
    folder = write_png_folder(tmp_path / "names", 30)
    for prefix in ("train_", "test_"):
        write_png_folder(tmp_path / prefix, 10)
        for f in (tmp_path / prefix / "a").iterdir():
            f.rename(folder / "a" / f"{prefix}{f.name}")
    assert len(load_source(DataConfig(dataset=str(folder)))) == 10
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'train' (10 images), 'test' (10 images)" in warned[0]
    assert "split 'train' reads 10 of its 50 images, and 30 images whose names match no split are left out" in warned[0]
    caplog.clear()
    for split in ("train", "test"):
        write_png_folder(tmp_path / "dirs" / split, 3)
    assert len(load_source(DataConfig(dataset=str(tmp_path / "dirs")))) == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(load_source(DataConfig(dataset=str(write_png_folder(tmp_path / "plain", 4))))) == 4
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("streaming", [False, True])
def test_webdataset_shards_train_with_images_and_labels(tmp_path, streaming):
    """A folder of webdataset tars (as `hf download` leaves a webdataset data set): the jpg of each sample is the
    image, its .cls the label; the split comes from the shard names."""
    wds = write_webdataset_shards(tmp_path / "wds", ["train-0000.tar", "train-0001.tar"])
    assert local_format(wds) == "webdataset"
    loader = build_dataloader(DataConfig(dataset=str(wds), streaming=streaming), 32, batch_size=4, seed=0,
                              label_column="label", num_classes=3)
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["pixel_values"].shape == (4, 3, 32, 32)
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert sum(int(b["skipped"]) for b in batches) == 0


def test_webdataset_with_two_image_keys_asks_for_one(tmp_path):
    wds = write_webdataset_shards(tmp_path / "wds", ["train-0000.tar"], formats=("png", "jpg"))
    with pytest.raises(DataError, match=r"several image keys \(png, jpg\): set data.image_column"):
        load_source(DataConfig(dataset=str(wds)))
    assert "jpg" in load_source(DataConfig(dataset=str(wds), image_column="jpg")).column_names
