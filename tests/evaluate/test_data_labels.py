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
