"""evaluate and explain: --data.max_bad_fraction (the option their error names), and explain never reads
the figure it wrote into an --images folder."""

import json

import numpy as np
import pytest
from PIL import Image

from aft_hf.cli import main


@pytest.fixture(scope="module")
def partly_broken(tmp_path_factory):
    """Two classes, 18 readable images and 4 broken files: 4 / 22 unreadable, over the default 0.1."""
    root = tmp_path_factory.mktemp("broken") / "imgs"
    rng = np.random.default_rng(0)
    for i in range(22):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        if i < 4:
            (folder / f"{i:02d}.png").write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


@pytest.mark.slow
def test_evaluate_accepts_max_bad_fraction(tiny_clip_path, partly_broken, tmp_path, capsys):
    args = ["evaluate", "--model", str(tiny_clip_path), "--dataset", "imagefolder", "--data-dir", str(partly_broken),
            "--split", "train", "--metrics", "zeroshot", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "raise data.max_bad_fraction" in err
    assert main([*args, "--data.max_bad_fraction", "0.5", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["skipped_images"] == 4
    assert main([*args, "--max-bad-fraction", "1.5", "--out", str(tmp_path / "c")]) == 2
    assert "--data.max_bad_fraction must be in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.slow
def test_explain_accepts_max_bad_fraction(tiny_clip_path, partly_broken, tmp_path, capsys):
    args = ["explain", "--model", str(tiny_clip_path), "--images", str(partly_broken), "--max-images", "30",
            "--methods", "saliency", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) != 0
    assert "raise data.max_bad_fraction" in capsys.readouterr().err
    assert main([*args, "--data.max_bad_fraction", "0.5", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "explain.json").read_text())
    assert len(summary["images"]) == 18 and len(summary["unreadable_images"]) == 4


@pytest.mark.slow
def test_explain_out_inside_images_does_not_read_its_figure(tiny_clip_path, tmp_path):
    """The issue: explain --out equal to --images read its own figure the next time."""
    folder = tmp_path / "imgs"
    (folder / "cat").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "cat" / f"{i}.png")
    args = ["explain", "--model", str(tiny_clip_path), "--images", str(folder), "--methods", "saliency",
            "--device", "cpu", "--out", str(folder)]
    for _ in range(2):
        assert main(args) == 0
        summary = json.loads((folder / "explain.json").read_text())
        assert [p.rsplit("/", 1)[-1] for p in summary["images"]] == ["0.png", "1.png"]
    assert (folder / "explanations.png").is_file()
