"""Hostile and unusual data: empty streams, stalls, huge or rotated or animated images, failing
reads, bad-sample limits, every local form of a data set, and one-line errors in every entry point."""

import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from aft_hf.cli import main
from aft_hf.config import DataConfig, load_config
from aft_hf.data import (
    BadSamples,
    DataError,
    ImageLimits,
    build_dataloader,
    load_image_dataset,
    open_image,
    watch_stalls,
)
from aft_hf.data.images import ImageRejected, load_readable_images
from aft_hf.data.loading import StreamedImages
from tests.image_helpers import write_png_folder

RED, BLUE = (255, 0, 0), (0, 0, 255)


def texts_only(folder):
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")
    return folder


def pixels(loader):
    return torch.cat([b["pixel_values"] for b in loader])


# ------------------------------------------------------------------ 1. no silent spin


def test_empty_stream_and_stream_smaller_than_a_batch_are_errors(tmp_path):
    empty = DataConfig(dataset=str(texts_only(tmp_path / "empty")), streaming=True)
    with pytest.raises(DataError, match="ended before filling one batch of 8 images.*0 readable"):
        list(build_dataloader(empty, 32, batch_size=8, seed=0))
    seven = DataConfig(dataset=str(write_png_folder(tmp_path / "seven", 7)), streaming=True)
    with pytest.raises(DataError, match="one batch of 8 images.*7 readable"):
        list(build_dataloader(seven, 32, batch_size=8, seed=0))
    # a resumed pass fast-forwarded to the very end of the stream is legitimately empty
    assert list(build_dataloader(seven, 32, batch_size=7, seed=0, skip_examples=7)) == []


def test_cli_train_on_empty_stream_exits_2_at_once(tiny_clip_path, tmp_path, capsys):
    rc = main(["train", "--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(texts_only(tmp_path / "e")),
               "--data.streaming", "true", "--output_dir", str(tmp_path / "out"), "--logging.report_to", "none",
               "--optim.batch_size", "4", "--max_steps", "3", "--warmup_steps", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "aft-hf train: error: the stream of" in err and "ended before filling one batch" in err


def slow(n, wait):
    for i in range(n):
        time.sleep(wait)
        yield i


@pytest.mark.slow
def test_stall_warning_names_what_it_waits_on(caplog):
    class Source:
        def describe(self):
            return "the stream of 'x': 3 records read"

    class Loader:
        dataset, num_workers = Source(), 0

    caplog.set_level(logging.WARNING, "aft_hf.data")
    assert list(watch_stalls(slow(2, 0.6), 0.15, Loader())) == [0, 1]
    assert "no batch from the data pipeline" in caplog.text and "3 records read" in caplog.text
    caplog.clear()
    for _ in watch_stalls(slow(3, 0), 0.15, Loader()):  # a slow consumer is not a stalled pipeline
        time.sleep(0.4)
    assert "no batch" not in caplog.text


# ------------------------------------------------------------------ 2. exact fast-forward


def write_stream_with_bad_files(folder):
    write_png_folder(folder, 12)
    for i in (0, 4, 7):
        (folder / "a" / f"{i:03d}_bad.png").write_bytes(b"not an image")
    return folder


@pytest.mark.slow
def test_fast_forward_counts_raw_records_in_any_epoch(tmp_path):
    """Skipping by records read (bad ones included) resumes exactly, in epoch 0 and in a later epoch."""
    cfg = DataConfig(dataset=str(write_stream_with_bad_files(tmp_path / "d")), streaming=True, shuffle_buffer=4,
                     max_bad_fraction=0.5)
    seen = []
    for epoch in (0, 1):
        loader = build_dataloader(cfg, 32, batch_size=2, seed=0)
        loader.dataset.set_epoch(epoch)
        batches = list(loader)
        seen.append(pixels(batches))
        assert sum(int(b["records"]) for b in batches) == 15 and sum(int(b["skipped"]) for b in batches) == 3
        records = sum(int(b["records"]) for b in batches[:3])
        resumed = build_dataloader(cfg, 32, batch_size=2, seed=0, skip_examples=records)
        resumed.dataset.set_epoch(epoch)
        assert torch.equal(pixels(batches[3:]), pixels(resumed))
    assert not torch.equal(*seen)  # epochs differ in order (so the check above means something)


# ------------------------------------------------------------------ 3. hostile images


def test_header_limits_reject_before_decoding(tmp_path):
    Image.new("L", (1, 100_000), 128).save(tmp_path / "strip.png")  # 224 x 22.4M pixels once resized
    with pytest.raises(ImageRejected, match="aspect ratio"):
        open_image(str(tmp_path / "strip.png"))
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(ImageRejected, match="over the limit"):
        open_image(str(tmp_path / "big.png"), ImageLimits(max_pixels=1000))
    assert open_image(str(tmp_path / "big.png")).size == (40, 40)


def test_training_loader_skips_hostile_images_and_any_decode_failure(tmp_path, monkeypatch, caplog):
    folder = write_png_folder(tmp_path / "d", 10)
    Image.new("L", (1, 100_000), 128).save(folder / "a" / "strip.png")
    Image.new("RGB", (300, 300)).save(folder / "a" / "huge.png")
    import aft_hf.data.loading as loading

    real = loading.preprocess

    def flaky(value, size, limits):  # an exception no list of "decode errors" would name
        if str(value.get("path", "")).endswith("003.png"):
            raise KeyError("surprise")
        return real(value, size, limits)

    monkeypatch.setattr(loading, "preprocess", flaky)
    cfg = DataConfig(dataset=str(folder), max_image_pixels=50_000, max_bad_fraction=0.5, streaming=True)
    loader = build_dataloader(cfg, 32, batch_size=2, seed=0)
    assert len(pixels(loader)) == 8 and loader.dataset.bad.skipped == 3  # each record read once
    assert "strip.png" in caplog.text and "huge.png" in caplog.text and "surprise" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_each_unreadable_file_counts_once_per_epoch(tmp_path, caplog, workers):
    """4 unreadable files in a row (the last records, so the scan for a replacement wraps around): one epoch
    counts 4, not 4 + 3 + 2 + 1 as when every file a scan passed over was counted; with worker processes too."""
    folder = write_png_folder(tmp_path / "d", 28)
    for c in "abcd":
        (folder / "a" / f"bad_{c}.png").write_bytes(b"not an image")
    cfg = DataConfig(dataset=str(folder), max_bad_fraction=0.5, num_workers=workers)
    loader = build_dataloader(cfg, 32, batch_size=4, seed=0)
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 8 and sum(int(b["skipped"]) for b in batches) == 4
    if workers == 0:
        assert (loader.dataset.bad.skipped, loader.dataset.bad.read) == (8, 64)
        named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping unreadable")]
        assert sorted(m.split("'")[1].rsplit("/", 1)[1] for m in named) == [f"bad_{c}.png" for c in "abcd"]


def test_exif_orientation_is_applied_and_boxes_line_up(tmp_path):
    """Stored 40 wide x 20 high, red left half; Orientation=6 shows it 20 x 40 with red on top."""
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "imgs" / "phone.jpg"
    path.parent.mkdir()
    stored.save(path, exif=exif, quality=95)
    upright = open_image(str(path))
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200  # red on top, as any viewer shows it
    batch, kept = load_readable_images([path], 16)  # explain's reader
    assert kept == [0] and batch[0, 0, :4].mean() > 0.8 and batch[0, 2, -4:].mean() > 0.8

    from aft_hf.evaluate.data import load_labelled_images

    # evaluate: a box in displayed pixels (the red top half) must cover the red part of the tensor
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "box": datasets.Sequence(datasets.Value("float32"))})
    ds = datasets.Dataset.from_dict({"image": [str(path)], "label": [0], "box": [[0, 0, 20, 20]]}, features=features)
    ds.save_to_disk(tmp_path / "saved")
    data = load_labelled_images(str(tmp_path / "saved"), 16, box_column="box", progress=False)
    image, mask = data.images[0], data.masks[0, 0].bool()
    assert mask.any() and (~mask).any()
    assert image[0][mask].mean() > 0.8 and image[2][mask].mean() < 0.3  # the box sits on the red part


def test_animated_image_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    for name in ("anim.gif", "anim.webp"):
        r, _, b = open_image(str(tmp_path / name)).convert("RGB").getpixel((8, 8))
        assert r > 200 and b < 60, name


class FlakyStream:
    """A stand-in for a streamed split whose reads fail at one record (``times`` reads, then work)."""

    def __init__(self, folder, fail_at, times):
        self.files = sorted(str(p) for p in (folder / "a").glob("*.png"))
        self.fail_at, self.times = fail_at, times

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        for i, f in enumerate(self.files):
            if i == self.fail_at and self.times > 0:
                self.times -= 1
                raise ConnectionError("connection reset mid-shard")
            yield {"image": {"path": f, "bytes": None}}


def test_stream_read_errors_are_retried_then_skipped(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(StreamedImages, "retry_wait_s", 0.0)
    folder = write_png_folder(tmp_path / "d", 6)
    transient = StreamedImages(FlakyStream(folder, 3, times=2), "image", 32, retries=3)
    assert len(list(transient)) == 6 and transient.bad.skipped == 0
    assert "retry 2 of 3" in caplog.text
    skippable = StreamedImages(FlakyStream(folder, 3, times=4), "image", 32, retries=3)
    items = list(skippable)
    assert len(items) == 5 and skippable.bad.skipped == 1 and sum(r for _, _, r in items) == 6
    stuck = StreamedImages(FlakyStream(folder, 3, times=100), "image", 32, retries=1)
    with pytest.raises(DataError, match="fails at record 3 every time"):
        list(stuck)


def test_bad_fraction_limit_and_capped_warnings(tmp_path, caplog):
    bad = BadSamples(max_bad_fraction=0.2, source="'x'", max_logged=3)
    for i in range(15):
        bad.good()
    for i in range(4):
        bad.bad(f"f{i}.png", OSError("broken"))
    assert "f2.png" in caplog.text and "f3.png" not in caplog.text and "counted, not logged" in caplog.text
    with pytest.raises(DataError, match="5 of the 20 images read from 'x' were unreadable.*max_bad_fraction"):
        bad.bad("f4.png", OSError("broken"))
    folder = write_png_folder(tmp_path / "d", 20)
    for i in range(10):
        (folder / "a" / f"bad{i}.png").write_bytes(b"")
    with pytest.raises(DataError, match="max_bad_fraction"):
        list(build_dataloader(DataConfig(dataset=str(folder), streaming=True), 32, batch_size=2, seed=0))


@pytest.mark.slow
def test_explain_puts_the_next_image_in_an_unreadable_ones_place(tiny_clip_path, tmp_path):
    """--max-images 4 with two unreadable files among the first four explained two images; training fills its batch."""
    images = write_png_folder(tmp_path / "imgs", 6)  # a/000.png ... a/005.png
    for name in ("000.png", "002.png"):
        (images / "a" / name).write_bytes(b"broken")
    out = tmp_path / "out"
    assert main(["explain", "--model", str(tiny_clip_path), "--images", str(images), "--max-images", "4",
                 "--methods", "saliency", "--out", str(out)]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert [Path(p).name for p in summary["images"]] == ["001.png", "003.png", "004.png", "005.png"]
    assert sorted(Path(p).name for p in summary["unreadable_images"]) == ["000.png", "002.png"]
    assert torch.load(out / "maps.pt")["saliency"].shape[0] == 4


@pytest.mark.slow
def test_explain_skips_unreadable_images(tiny_clip_path, tmp_path, capsys):
    images = write_png_folder(tmp_path / "imgs", 3)
    (images / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(tiny_clip_path), "--images", str(images), "--labels", "thing",
               "--methods", "saliency", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "explain.json").read_text())
    assert len(summary["images"]) == 3 and summary["unreadable_images"][0].endswith("broken.png")
    assert main(["explain", "--model", str(tiny_clip_path), "--images", str(texts_only(tmp_path / "none")),
                 "--out", str(out)]) == 2
    assert "no image files found" in capsys.readouterr().err


# ------------------------------------------------------------------ 5. every local form


@pytest.fixture
def saved_forms(tmp_path, monkeypatch):
    """The same 8 labelled images (bytes embedded, as on the Hub) as parquet shards (bare, and with
    a README config, as `hf download` leaves them) and a save_to_disk folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # no stale cache
    files = sorted((write_png_folder(tmp_path / "imgs", 8) / "a").glob("*.png"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": None} for f in files],
                                     "label": [i % 2 for i in range(8)]}, features=features)
    bare = tmp_path / "parquet"
    (bare / "data").mkdir(parents=True)
    for i in range(2):
        ds.shard(2, i, contiguous=True).to_parquet(str(bare / "data" / f"train-{i:05d}-of-00002.parquet"))
    hub = tmp_path / "hub_layout"
    (hub / "data").mkdir(parents=True)
    ds.to_parquet(str(hub / "data" / "validation-00000-of-00001.parquet"))
    (hub / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: validation\n"
                                   "    path: data/validation-*\n---\n# a dataset\n")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(saved))
    return {"parquet": bare, "hub": hub, "saved": saved}


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_readme_and_save_to_disk_folders_load(saved_forms, streaming):
    for name, path in saved_forms.items():
        split = "validation" if name == "hub" else "train"
        loader = build_dataloader(DataConfig(dataset=str(path), split=split, streaming=streaming), 32, 4, seed=0)
        assert len(pixels(loader)) == 8, name
    with pytest.raises(DataError, match="no split 'test'.*train"):
        load_image_dataset(DataConfig(dataset=str(saved_forms["saved"]), split="test"))


def test_a_save_to_disk_folder_takes_slices_of_its_splits(saved_forms):
    """`data.split 'train[:80%]'` (the documented held-out recipe) was refused for a save_to_disk DatasetDict."""
    saved = str(saved_forms["saved"])
    assert len(load_image_dataset(DataConfig(dataset=saved, split="train[:75%]"))) == 6
    assert len(load_image_dataset(DataConfig(dataset=saved, split="train[75%:]"))) == 2
    with pytest.raises(DataError, match="no split 'train\\[:7' .*splits: train"):
        load_image_dataset(DataConfig(dataset=saved, split="train[:7"))
    single = saved_forms["saved"].parent / "single"  # one Dataset saved: it is its split, not every split at once
    datasets.load_from_disk(saved)["train"].save_to_disk(str(single))
    assert len(load_image_dataset(DataConfig(dataset=str(single), split="train[:75%]"))) == 6
    with pytest.raises(DataError, match="no split 'validation' .*splits: train"):
        load_image_dataset(DataConfig(dataset=str(single), split="validation"))


def test_a_relative_folder_named_like_a_datasets_loader_reads_that_folder_only(saved_forms, tmp_path, monkeypatch):
    """`--data.dataset parquet` from the folder holding `parquet/` read every parquet file of the working directory
    (datasets took it for its `parquet` loader): 16 images here instead of the folder's 8."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    shutil.copy(next((saved_forms["parquet"] / "data").iterdir()), tmp_path / "other" / "train-extra.parquet")
    for spelling in ("parquet", "./parquet"):
        assert len(load_image_dataset(DataConfig(dataset=spelling, split="train"))) == 8, spelling


@pytest.mark.slow
def test_train_and_evaluate_on_parquet_and_save_to_disk(tiny_clip_path, saved_forms, tmp_path):
    from aft_hf.train import train

    for name in ("parquet", "saved"):
        cfg = load_config(None, ["--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(saved_forms[name]),
                                 "--output_dir", str(tmp_path / f"out_{name}"), "--optim.batch_size", "4", "--max_steps", "2",
                                 "--warmup_steps", "1", "--attack.steps", "1", "--logging.report_to", "none"])
        assert (train(cfg) / "model.safetensors").is_file()
        summary = json.loads((tmp_path / f"out_{name}" / "train_summary.json").read_text())
        assert summary["steps"] == 2 and summary["images_seen_per_process"] == [8]
    out = tmp_path / "report"
    rc = main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(saved_forms["hub"]), "--max-samples", "8",
               "--metrics", "zeroshot", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 8 and report["split"] == "validation"


# ------------------------------------------------------------------ 4 + 6. batch geometry, one-line errors


@pytest.mark.slow
def test_accumulation_keeps_every_step_a_full_global_batch(tiny_clip_path, tmp_path):
    """10 images, global batch 6 = 3 micro-batches of 2: epochs end mid-step; the rest carries over."""
    from aft_hf.train import train

    data = write_png_folder(tmp_path / "imgs", 10)
    cfg = load_config(None, ["--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(data),
                             "--output_dir", str(tmp_path / "out"), "--optim.batch_size", "6",
                             "--gradient_accumulation_steps", "3", "--max_steps", "4", "--warmup_steps", "1",
                             "--attack.steps", "1", "--logging.report_to", "none"])
    train(cfg)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["images_seen_per_process"] == [4 * 6]


@pytest.mark.slow
def test_one_line_errors_for_unknown_builtin_and_missing_or_empty_data(tiny_clip_path, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    train = ["train", "--model.name_or_path", str(tiny_clip_path), "--output_dir", str(tmp_path / "o"),
             "--logging.report_to", "none"]
    cases = [
        (train + ["--data.dataset", "builtin:faces"], "unknown builtin dataset 'builtin:faces' (known: builtin:shapes"),
        (train + ["--data.dataset", str(empty), "--data.streaming", "true"], "holds no images"),
        (train + ["--data.dataset", str(empty)], "holds no images"),
        (train + ["--data.dataset", str(tmp_path / "missing")], "there is no folder"),
        (["evaluate", "--model", str(tiny_clip_path), "--dataset", str(empty), "--out", str(tmp_path / "r")],
         "holds no images"),
        (["evaluate", "--model", str(tiny_clip_path), "--dataset", "builtin:faces", "--out", str(tmp_path / "r")],
         "unknown builtin dataset"),
        (["explain", "--model", str(tiny_clip_path), "--images", str(empty), "--out", str(tmp_path / "x")],
         "no image files found"),
        (["explain", "--model", str(tiny_clip_path), "--images", str(tmp_path / "missing"),
          "--out", str(tmp_path / "x")], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in err and "Traceback" not in err, err  # config errors list problems
