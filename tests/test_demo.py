"""`aft-hf demo` end to end on a quickly pretrained world CLIP, and its statistics on known values."""

import json
import math

import pytest
import torch
from huggingface_hub import ModelCard

from aft_hf.cli import main
from aft_hf.demo.measure import paired, spread


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "base"
    assert main(["world", "pretrain", "--out", str(out), "--image-size", "32", "--steps", "2", "--batch-size", "16",
                 "--warmup-steps", "1", "--patch-size", "8", "--vision-hidden", "32", "--vision-layers", "2",
                 "--vision-heads", "2", "--vision-mlp", "64", "--eval-images", "16"]) == 0
    return out


def test_short_demo_writes_every_promised_file(quick_world, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--base", str(quick_world), "--out", str(out), "--seeds", "2", "--train-images", "32",
               "--eval-images", "6", "--robust-steps", "1", "--max_steps", "2", "--warmup_steps", "1",
               "--optim.batch_size", "8", "--attack.steps", "1"])
    assert rc == 0
    for name in ("report.json", "report.md", "saliency_grid.png", "metrics.png", "hub_folder/README.md",
                 "hub_folder/model.safetensors", "hub_folder/assets/saliency_grid.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["aft", "control"] and report["seeds"] == [0, 1]
    row = report["metrics"]["saliency"]["energy"]
    assert len(row["aft"]["per_seed"]) == 2 and len(row["delta_control"]["per_seed_paired"]) == 2
    assert 0 <= report["chance_energy"] <= 1
    md = (out / "report.md").read_text()
    assert f"{row['original']:.3f}" in md and f"{row['aft']['mean']:.3f} ± {row['aft']['sd']:.3f}" in md
    assert report["verdicts"] and all(v in md for v in report["verdicts"])
    for eps in ("1/255", "2/255", "4/255"):
        assert report["accuracy"]["robust"][eps]["original"] <= report["accuracy"]["clean"]["original"] + 1e-9
    card = ModelCard.load(out / "hub_folder" / "README.md")
    top1 = [r.metric_value for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert top1 and math.isclose(top1[0], report["accuracy"]["clean"]["aft"]["per_seed"][0], abs_tol=1e-9)
    assert "Verdict" in capsys.readouterr().out  # the CLI prints the report


def test_paired_and_spread_on_known_values():
    new, old = torch.tensor([1.0, 2.0, 3.0, float("nan")]), torch.tensor([0.0, 2.0, 1.0, 0.0])
    p = paired(new, old)
    assert p["n"] == 3 and math.isclose(p["mean"], 1.0) and math.isclose(p["improved"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(p["se"], 1.0 / math.sqrt(3), rel_tol=1e-6)  # differences 1, 0, 2: sd 1
    assert math.isclose(paired(new, old, higher_is_better=False)["improved"], 0.0)
    s = spread([1.0, 3.0])
    assert s["mean"] == 2.0 and math.isclose(s["sd"], math.sqrt(2)) and spread([5.0])["sd"] is None


def test_one_seed_shows_no_spread():
    """With one seed there is no spread over seeds: the table shows the mean alone, never '± 0.000'."""
    from aft_hf.demo.report import _cell

    assert _cell(spread([0.25])) == "0.250"
    assert "±" not in _cell(spread([0.25])) and _cell(spread([0.25, 0.35])) == "0.300 ± 0.071"
