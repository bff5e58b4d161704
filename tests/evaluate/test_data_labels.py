"""Labels and class names of a folder written by ``aft-hf world sample``, and where a bad mask is named."""

import json

import pytest
from PIL import Image

from aft_hf.commands.evaluate import world_label_feature
from aft_hf.evaluate.base import EvaluationError
from aft_hf.evaluate.data import load_labelled_images
from aft_hf.explain.inputs import collect_images, image_labels
from aft_hf.world import WorldConfig, write_imagefolder


def test_explain_labels_come_from_metadata_class_name(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "other").mkdir()
    for name in ("images/a.png", "images/b.png", "other/c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    rows = [{"file_name": "images/a.png", "class_name": "red circle"},
            {"file_name": "images/b.png", "class_name": "blue square"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    files = collect_images([str(tmp_path / "images"), str(tmp_path / "other")])
    # without metadata.jsonl every image of images/ would be labelled "images"
    assert image_labels(files, None) == ["red circle", "blue square", "other"]


def test_explain_labels_come_from_string_labels_and_metadata_csv_and_an_unnamed_label_is_said(tmp_path, caplog):
    """A metadata.jsonl whose labels are names, or a metadata.csv, labelled every image 'images' (its folder)."""
    import logging

    for kind in ("jsonl", "csv", "ints"):
        (tmp_path / kind / "images").mkdir(parents=True)
        for name in ("a.png", "b.png"):
            Image.new("RGB", (8, 8)).save(tmp_path / kind / "images" / name)
    (tmp_path / "jsonl" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"images/{n}.png", "label": c}) + "\n" for n, c in (("a", "red circle"),
                                                                                          ("b", "blue square"))))
    (tmp_path / "csv" / "metadata.csv").write_text("file_name,label\nimages/a.png,red circle\nimages/b.png,blue square\n")
    (tmp_path / "ints" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"images/{n}.png", "label": i}) + "\n" for i, n in enumerate("ab")))
    for kind in ("jsonl", "csv"):
        files = collect_images([str(tmp_path / kind)])
        assert [f.name for f in files] == ["a.png", "b.png"]
        assert image_labels(files, None) == ["red circle", "blue square"], kind
    with caplog.at_level(logging.WARNING):
        assert image_labels(collect_images([str(tmp_path / "ints")]), None) == ["images", "images"]
    assert "gives no class name for images/a.png" in caplog.text and "give --labels" in caplog.text


def test_world_folder_gives_class_names(tmp_path):
    write_imagefolder(tmp_path, 4, seed=0)
    feature = world_label_feature(str(tmp_path))
    assert feature is not None and list(feature.names) == list(WorldConfig().class_names)
    assert world_label_feature(str(tmp_path), "other") is None
    assert world_label_feature(str(tmp_path / "images")) is None


def test_mask_of_other_shape_is_named(tmp_path):
    write_imagefolder(tmp_path, 2, seed=0)
    Image.open(tmp_path / "masks" / "000001.png").resize((64, 32)).save(tmp_path / "masks" / "000001.png")
    with pytest.raises(EvaluationError, match="masks/000001.png"):
        load_labelled_images(str(tmp_path), 32, mask_column="mask", progress=False)


@pytest.mark.slow
def test_readme_world_sample_then_evaluate(tmp_path):
    """The README's two commands: a world sample is evaluated with its class names and masks."""
    from aft_hf.cli import main

    sample, report = tmp_path / "world_samples", tmp_path / "world_report"
    assert main(["world", "sample", "--out", str(sample), "-n", "8"]) == 0
    assert main(["evaluate", "--model", "builtin:world-clip", "--dataset", str(sample), "--mask-column", "mask",
                 "--metrics", "zeroshot", "pointing", "energy", "sparseness", "--methods", "saliency", "gradcam",
                 "--out", str(report)]) == 0
    result = json.loads((report / "report.json").read_text())
    assert result["num_samples"] == 8 and result["num_classes"] == 16
    assert result["class_names_source"].startswith("world.json")
    assert set(result["metrics"]) >= {"zeroshot_top1", "pointing_game", "energy_in_mask", "gini"}
    # the pointing tolerance scales with the 64 px input: 15 px at 224 px -> 4 px
    assert set(result["metrics"]["pointing_game"]["saliency"]) == {"exact", "tolerance_4px"}
    assert (report / "examples.png").stat().st_size > 0


def _named_folder(root, rows):
    root.mkdir()
    for i, (label, name) in enumerate(rows):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(root / f"{i}.png")
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "label": label, "class_name": n})
                                                 + "\n" for i, (label, n) in enumerate(rows)))
    return root


def test_integer_labels_take_their_names_from_a_class_name_column(tmp_path, caplog):
    """metadata.jsonl with `"label": 2, "class_name": "bird"`: the classes are named from the whole split's
    class_name column (a --max-samples subset still has every class), as explain reads the same column."""
    folder = _named_folder(tmp_path / "named", [(0, "cat"), (1, "dog"), (2, "bird"), (1, "dog")])
    data = load_labelled_images(str(folder), 32, max_samples=1, progress=False)
    assert list(data.label_feature.names) == ["cat", "dog", "bird"] and data.names_column == "class_name"
    assert not data.named_labels and len(data.labels) == 1
    clash = _named_folder(tmp_path / "clash", [(0, "cat"), (0, "dog"), (1, "bird")])
    gap = _named_folder(tmp_path / "gap", [(0, "cat"), (2, "bird")])
    for folder, said in ((clash, "gives label 0 two names ('cat', 'dog')"), (gap, "")):
        caplog.clear()
        data = load_labelled_images(str(folder), 32, progress=False)
        assert data.names_column is None and not hasattr(data.label_feature, "names")
        assert said in caplog.text and (said or "class_name" not in caplog.text)  # a class without images: no warning


@pytest.mark.slow
def test_evaluate_names_the_classes_from_the_class_name_column(tmp_path, tiny_clip_path, capsys):
    from aft_hf.cli import main

    folder = _named_folder(tmp_path / "named", [(0, "cat"), (1, "dog"), (2, "bird"), (1, "dog")])
    assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(folder), "--metrics", "zeroshot",
                 "--max-samples", "2", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["num_classes"] == 3 and report["class_names_source"] == "the dataset's class_name column"
    clash = _named_folder(tmp_path / "clash", [(0, "cat"), (0, "dog"), (1, "bird")])
    assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(clash), "--metrics", "zeroshot",
                 "--out", str(tmp_path / "ev2")]) == 2
    assert "no class names" in capsys.readouterr().err


def test_a_names_file_in_another_order_or_count_than_the_classlabel_is_refused(tmp_path, tiny_clip_path, capsys):
    """Class folders are named in sorted order; a file with the same names in another order scored 0% silently."""
    import datasets

    from aft_hf.cli import main
    from aft_hf.evaluate.classnames import names_order_problem

    feature = datasets.ClassLabel(names=["blue_square", "green_triangle", "red_circle"])
    problem = names_order_problem(["red circle", "blue square", "green triangle"], feature)
    assert "in another order (label 0 is 'blue_square' in the data set, 'red circle' in the file)" in problem
    assert "gives 4 names but the label column has 3 classes" in names_order_problem(list("abcd"), feature)
    assert names_order_problem(["Blue square", "green triangle", "red circle"], feature) is None  # same order
    assert names_order_problem(["a square", "a triangle", "a circle"], feature) is None  # other names: the point
    folder = tmp_path / "shapes"
    for cls in ("blue_square", "red_circle"):
        (folder / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(folder / cls / "0.png")
    (tmp_path / "names.txt").write_text("red circle\nblue square\n")
    assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(folder), "--metrics", "zeroshot",
                 "--class-names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "ev")]) == 2
    assert "--class-names lists the data set's own class names in another order" in capsys.readouterr().err


def test_a_row_without_a_label_is_named_not_a_traceback(tmp_path):
    folder = _named_folder(tmp_path / "named", [(0, "cat"), (1, "dog"), (2, "bird")])
    rows = (folder / "metadata.jsonl").read_text().splitlines()
    rows[1] = json.dumps({"file_name": "1.png", "class_name": "dog"})  # no "label"
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(EvaluationError, match="row 1 of the split has no 'label'"):
        load_labelled_images(str(folder), 32, progress=False)


@pytest.mark.slow
def test_training_reads_the_class_name_column_as_evaluate_does(tmp_path, caplog):
    """Training's eval.* logged 'not a ClassLabel' and TeCoA refused the folder that evaluate named by its column."""
    import logging

    from aft_hf.config import load_config
    from aft_hf.objective_setup import training_class_names
    from aft_hf.train import train

    names = ["red circle", "blue square", "green cross"]  # words the world CLIP's tokenizer knows
    folder = _named_folder(tmp_path / "named", [(i % 3, names[i % 3]) for i in range(8)])
    assert training_class_names(load_config(None, ["--data.dataset", str(folder)]).data) == names
    with caplog.at_level(logging.INFO):
        train(load_config(None, [
            "--model.name_or_path", "builtin:world-clip", "--data.dataset", str(folder), "--output_dir",
            str(tmp_path / "run"), "--optim.batch_size", "4", "--max_steps", "2", "--warmup_steps", "0",
            "--attack.steps", "1", "--logging.report_to", "none", "--eval.every_steps", "2", "--eval.num_samples", "8"]))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["eval"]["eval/zeroshot_top1"] is not None, summary["eval"]
    assert "not a ClassLabel" not in caplog.text
