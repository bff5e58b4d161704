"""What ``aft-hf explain --images`` takes from a folder: the images a ``metadata.jsonl`` lists, else every image."""

import pytest
from PIL import Image

from aft_hf.explain.inputs import collect_images, image_labels
from aft_hf.explain.targets import ExplainError
from aft_hf.world import WorldConfig, write_imagefolder


def test_a_world_sample_folder_gives_its_images_not_its_masks(tmp_path):
    """``aft-hf world sample`` writes images/, masks/ and metadata.jsonl; an earlier evaluate wrote examples.png."""
    write_imagefolder(tmp_path, 3, seed=0)
    (tmp_path / "report").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "report" / "examples.png")
    files = collect_images([str(tmp_path)])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [f"images/{i:06d}.png" for i in range(3)]
    labels = image_labels(files, None)
    assert "masks" not in labels and set(labels) <= set(WorldConfig().class_names)
    assert collect_images([str(tmp_path)], exclude=[files[1]]) == [files[0], files[2]]


def test_a_folder_without_metadata_gives_every_image_under_it(tmp_path):
    for name in ("b/2.png", "a/1.jpg", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert [f.relative_to(tmp_path).as_posix() for f in collect_images([str(tmp_path)])] == ["a/1.jpg", "b/2.png"]


def test_a_metadata_row_without_a_file_name_is_named(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n\n{"caption": "no file"}\n')
    with pytest.raises(ExplainError, match=r"metadata.jsonl line 3 is not a JSON object with a file_name"):
        collect_images([str(tmp_path)])
