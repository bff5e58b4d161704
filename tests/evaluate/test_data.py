"""Evaluation data: masks and boxes line up with their images; malformed label/mask/box columns are clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aft_hf.evaluate import EvaluationError
from aft_hf.evaluate.data import load_labelled_images

pytestmark = pytest.mark.usefixtures("single_thread")


def _folder(root, image_size=(96, 64), mask_size=None, n=2):
    """Images of ``image_size`` (w, h) whose object is the column band x in [16, 32); masks at ``mask_size``."""
    w, h = image_size
    mw, mh = mask_size or image_size
    (root / "masks").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / f"img{i}.png")
        mask = np.zeros((mh, mw), np.uint8)
        mask[:, round(16 * mw / w):round(32 * mw / w)] = 1  # 0/1 masks are common: any non-zero is object
        Image.fromarray(mask).save(root / "masks" / f"m{i}.png")
        rows.append({"file_name": f"img{i}.png", "cls": i % 2, "name": "cat", "caption": "a dog on grass",
                     "box": [16, 0, 32, h], "boxes": [[16, 0, 24, h], [24, 0, 32, h]], "mask_file_name": f"masks/m{i}.png"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def _expected(size=32):
    # 96x64 -> shortest edge 32 -> 48x32, centre crop drops 8 columns on the left: x in [16, 32) -> [0, 8)
    m = torch.zeros(1, size, size)
    m[..., :8] = 1
    return m


def _load(folder, **kw):
    return load_labelled_images(str(folder), 32, label_column="cls", progress=False, **kw)


def test_masks_and_boxes_get_the_image_resize_and_crop(tmp_path):
    full = _load(_folder(tmp_path / "full"), mask_column="mask")
    half = _load(_folder(tmp_path / "half", mask_size=(48, 32)), mask_column="mask")  # same shape, lower resolution
    box = _load(_folder(tmp_path / "box"), box_column="box")
    union = _load(_folder(tmp_path / "union"), box_column="boxes")  # a list of boxes: their union
    for data in (full, half, box, union):
        assert data.masks.shape == (2, 1, 32, 32)
        assert torch.equal(data.masks[0], _expected()), data.masks[0, 0, 0]


def test_a_mask_of_another_aspect_ratio_is_an_error(tmp_path):
    with pytest.raises(EvaluationError, match=r"--mask-column 'mask'.*16x64 mask.*96x64 image"):
        _load(_folder(tmp_path / "wide", mask_size=(16, 64)), mask_column="mask")


@pytest.mark.parametrize("kw, match", [
    ({"label_column": "caption", "max_samples": 1}, None),  # names (a caption is one too): allowed, below
    ({"label_column": "boxes"}, r"--label-column 'boxes' must hold class indices, class names or a ClassLabel"),
    ({"mask_column": "caption"}, r"--mask-column 'caption' must hold mask images.*'a dog on grass'"),
    ({"box_column": "cls"}, r"--box-column 'cls' must hold a box \[x0, y0, x1, y1\]"),
    ({"box_column": "caption"}, r"--box-column 'caption' must hold a box"),
])
def test_malformed_columns_name_the_column_and_what_it_should_hold(tmp_path, kw, match):
    folder = _folder(tmp_path / "bad")
    kw = {"label_column": "cls", **kw}
    if match is None:
        load_labelled_images(str(folder), 32, progress=False, **kw)
        return
    with pytest.raises(EvaluationError, match=match):
        load_labelled_images(str(folder), 32, progress=False, **kw)


def test_labels_given_as_class_names_index_the_runs_class_names(tmp_path):
    """`"label": "cat"` in metadata.jsonl: the distinct names, sorted, are the classes until the run's own class
    names (a --class-names file, a world's names) are known, then the labels index those."""
    folder = _folder(tmp_path / "named", n=4)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for row, name in zip(rows, ["dog", "cat", "dog", "bird"]):
        row["name"] = name
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_labelled_images(str(folder), 32, label_column="name", progress=False)
    assert data.named_labels and list(data.label_feature.names) == ["bird", "cat", "dog"]
    given = {f"img{i}.png": name for i, name in enumerate(["dog", "cat", "dog", "bird"])}  # rows come shuffled
    names = [given[source] for source in data.sources]
    assert data.labels.tolist() == [["bird", "cat", "dog"].index(n) for n in names]
    mapped = data.for_class_names(["cat", "dog", "fish", "bird"])
    assert mapped.labels.tolist() == [["cat", "dog", "fish", "bird"].index(n) for n in names]
    assert not mapped.named_labels
    assert mapped.for_class_names(["cat", "dog", "fish", "bird"]) is mapped  # mapped once
    with pytest.raises(EvaluationError, match="label 'bird' is not one of the 2 class names"):
        data.for_class_names(["cat", "dog"])
    from aft_hf.evaluate.data import _label_tensor  # datasets itself refuses a JSON column of mixed types

    with pytest.raises(EvaluationError, match="--label-column 'name' mixes class names and class indices"):
        _label_tensor(["cat", 3], None, "name")


@pytest.mark.slow
def test_cli_evaluate_bad_mask_or_label_column_exits_2(tiny_clip_path, tmp_path, capsys):
    from aft_hf.cli import main

    folder = _folder(tmp_path / "wide", mask_size=(16, 64), n=4)
    base = ["evaluate", "--model", str(tiny_clip_path), "--dataset", str(folder), "--metrics", "zeroshot",
            "--out", str(tmp_path / "out")]
    assert main(base + ["--label-column", "cls", "--mask-column", "mask"]) == 2
    assert "aspect ratio" in capsys.readouterr().err
    assert main(base + ["--label-column", "boxes"]) == 2
    err = capsys.readouterr().err
    assert "--label-column 'boxes'" in err and "Traceback" not in err
    assert main(base + ["--label-column", "cls", "--mask-column", "mask", "--box-column", "boxes"]) == 2  # boxes were ignored
    assert "--mask-column and --box-column both given" in capsys.readouterr().err
    # labels given as class names ("cat"): looked up in the --class-names file, one line when one is missing
    (tmp_path / "names.txt").write_text("dog\nbird\n")
    assert main(base + ["--label-column", "name", "--class-names", str(tmp_path / "names.txt")]) == 2
    err = capsys.readouterr().err
    assert "error: label 'cat' is not one of the 2 class names (dog, bird)\n" in err and "Traceback" not in err
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    assert main(base + ["--label-column", "name", "--class-names", str(tmp_path / "names.txt")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_classes"] == 2 and report["per_image"]["label"] == [1, 1, 1, 1]


def _box_folder(root, **boxes):
    """The 96x64 images of ``_folder`` with extra box columns (the object is the band x in [16, 32))."""
    folder = _folder(root)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps({**r, **boxes}) for r in rows))
    return folder


@pytest.mark.parametrize("column, box, fmt, units", [
    ("coco", [16, 0, 16, 64], "xywh", "pixels"),
    ("corners01", [16 / 96, 0, 32 / 96, 1], "xyxy", "normalised"),
    ("coco01", [16 / 96, 0, 16 / 96, 1], "xywh", "normalised"),
])
def test_box_formats_give_the_same_mask(tmp_path, column, box, fmt, units):
    data = _load(_box_folder(tmp_path / "f", **{column: box}), box_column=column, box_format=fmt, box_units=units)
    assert torch.equal(data.masks[0], _expected())


@pytest.mark.parametrize("box, fmt, units, why", [
    ([16, 0, 16, 64], "xyxy", "pixels", "inverted or empty"),             # a COCO box read as corners
    ([32, 0, 16, 64], "xyxy", "pixels", "inverted or empty"),             # inverted
    ([16, 0, 120, 64], "xyxy", "pixels", r"outside the image \(96x64 pixels\)"),
    ([0.2, 0.0, 0.4, 0.9], "xyxy", "pixels", r"smaller than one pixel \(normalised coordinates\?"),
    ([16, 0, 32, 64], "xyxy", "normalised", r"outside the image \(\[0, 1\]\)"),  # pixels declared normalised
    ([40, 0, 80, 64], "xywh", "pixels", r"outside the image \(96x64 pixels\); a corner box read as \[x, y, w, h\]"),
    ([16, 0, 0, 64], "xywh", "pixels", "width or height <= 0"),
])
@pytest.mark.slow
def test_boxes_that_cannot_be_valid_are_refused_in_one_line(tmp_path, box, fmt, units, why):
    """The issue: such boxes became empty or 1-pixel masks that were only counted."""
    folder = _box_folder(tmp_path / "f", bad=box)
    with pytest.raises(EvaluationError, match=f"--box-column 'bad': box .* is not a valid {fmt} .*: {why}") as e:
        _load(folder, box_column="bad", box_format=fmt, box_units=units)
    assert "\n" not in str(e.value) and "img" in str(e.value)  # one line, naming the image


@pytest.mark.slow
def test_cli_evaluate_takes_the_box_convention(tiny_clip_path, tmp_path, capsys):
    from aft_hf.cli import main

    folder = _box_folder(tmp_path / "f", coco=[16, 0, 16, 64])
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    base = ["evaluate", "--model", str(tiny_clip_path), "--dataset", str(folder), "--label-column", "cls",
            "--class-names", str(tmp_path / "names.txt"),
            "--metrics", "pointing", "--methods", "saliency", "--box-column", "coco", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "not a valid xyxy" in capsys.readouterr().err
    assert main(base + ["--box-format", "xywh", "--out", str(tmp_path / "b")]) == 0


def test_images_are_the_shuffled_rows_named_by_file_or_row(tmp_path):
    """The images are those ``ds.shuffle(seed).select(range(n))`` gives (so results match earlier versions), each
    named for a person looking for it: by its file name in an image folder, by its row in the split otherwise."""
    import datasets

    folder = _folder(tmp_path / "f", n=6)
    data = _load(folder, max_samples=4, seed=3)
    assert data.sources and all(s.startswith("img") and s.endswith(".png") for s in data.sources)
    reference = datasets.load_dataset(str(folder), split="train").shuffle(seed=3).select(range(4))
    assert [int(s[3:-4]) for s in data.sources] == [int(r["image"].filename.split("img")[-1][:-4]) for r in reference]
    assert data.labels.tolist() == reference["cls"]

    rows = [{"image": {"bytes": (folder / f"img{i}.png").read_bytes(), "path": None}, "cls": i % 2} for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "cls": datasets.Value("int64")})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    saved = _load(tmp_path / "saved", max_samples=4, seed=3)
    expected = list(np.random.default_rng(3).permutation(6)[:4])
    assert saved.sources == [f"row {i}" for i in expected]
    assert saved.labels.tolist() == [i % 2 for i in expected]


@pytest.mark.slow
def test_examples_figure_names_each_row_by_its_source(tiny_clip_path, tmp_path, monkeypatch):
    from aft_hf.cli import main
    from aft_hf.evaluate import runner

    titles = []
    real = runner.attribution_grid
    monkeypatch.setattr(runner, "attribution_grid", lambda *a, **k: titles.extend(k["row_titles"]) or real(*a, **k))
    folder = _folder(tmp_path / "f", n=4)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(folder), "--label-column", "cls",
                 "--class-names", str(tmp_path / "names.txt"), "--metrics", "zeroshot", "--methods", "saliency",
                 "--out", str(tmp_path / "out")]) == 0
    assert len(titles) == 4 and all(t.split("\n")[0].startswith("img") for t in titles), titles
    assert all(t.split("\n")[1] in ("cat", "dog") for t in titles)
    assert (tmp_path / "out" / "examples.png").stat().st_size > 0


def test_evaluate_data_errors_name_its_own_options_and_a_mistyped_folder(tmp_path, monkeypatch, capsys):
    """The shared loaders name training's fields (data.split); evaluate's user types --split."""
    from aft_hf.cli import main
    from aft_hf.commands import EVALUATE_DATA_OPTIONS, data_messages_as
    from aft_hf.data.errors import DataError

    with pytest.raises(DataError, match=r"^could not read x: set --split / --config-name \(data.jsonl\)$"):
        with data_messages_as(EVALUATE_DATA_OPTIONS):
            raise DataError("could not read x: set data.split / data.config_name (data.jsonl)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    assert main(["evaluate", "--model", "builtin:world-clip", "--dataset", "bad/nonexistent_dir", "--metrics",
                 "zeroshot", "--out", "ev"]) == 2
    err = capsys.readouterr().err
    assert "no such local folder ('bad' exists, 'bad/nonexistent_dir' does not)" in err and "data.dataset" not in err


def test_a_missing_mask_file_is_named_by_its_path(tmp_path):
    from aft_hf.evaluate.data import _open_mask

    missing = str(tmp_path / "masks" / "004.png")
    with pytest.raises(EvaluationError, match=r"could not read '.*masks/004.png' as an image \(no such file\)$"):
        _open_mask({"bytes": None, "path": missing}, "mask")
