"""`aft-hf demo --roar`: ROAR of the original and the AFT fine-tunes on fresh world images, with its evaluator's
intact accuracy, the floor flag and the separation statistics."""

import json
import math

import pytest

from aft_hf.cli import main
from aft_hf.demo.roar import _curve_stats, separation

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "base"
    assert main(["world", "pretrain", "--out", str(out), "--image-size", "32", "--steps", "2", "--batch-size", "16",
                 "--warmup-steps", "1", "--patch-size", "8", "--vision-hidden", "32", "--vision-layers", "2",
                 "--vision-heads", "2", "--vision-mlp", "64", "--eval-images", "16"]) == 0
    return out


FAST = ["--train-images", "32", "--eval-images", "6", "--robust-steps", "1", "--max_steps", "2",
        "--warmup_steps", "1", "--optim.batch_size", "8", "--attack.steps", "1", "--norms", "linf", "--no-control",
        "--methods", "saliency", "--roar", "--roar-train-images", "48", "--roar-test-images", "24",
        "--roar-fractions", "0.2", "0.5"]


@pytest.mark.slow
def test_demo_roar_reports_curves_beside_the_intact_accuracy_and_flags_a_weak_evaluator(quick_world, tmp_path):
    out = tmp_path / "demo"
    # floor 0: the 48-image evaluator of a 2-step world cannot read it, but the whole path must run
    assert main(["demo", "--base", str(quick_world), "--out", str(out), "--seeds", "2", *FAST,
                 "--roar-floor", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    r = report["roar"]
    assert r["settings"]["train_images"] == 48 and r["settings"]["fractions"] == [0.2, 0.5]
    assert r["fractions"] == [0.0, 0.2, 0.5] and not r["below_floor"]
    assert set(r["curves"]) == {"original", "aft_linf", "random"}
    # original: 1 model x 2 evaluator seeds; AFT: 2 fine-tune seeds x 2 evaluator seeds
    assert r["curves"]["original"]["saliency"]["curves"] == 2 and r["curves"]["aft_linf"]["saliency"]["curves"] == 4
    assert all(c[0] in r["intact_accuracy_per_seed"] for c in r["curves"]["aft_linf"]["saliency"]["per_curve"])
    sep = r["separation"][0]
    assert sep["variant"] == "aft_linf" and [p["fraction"] for p in sep["points"]] == [0.2, 0.5]
    md = (out / "report.md").read_text()
    assert "ROAR (remove and retrain)" in md and f"intact images {r['intact_accuracy']:.3f}" in md
    assert any(v.startswith("ROAR, Simple Gradient, AFT linf vs original") for v in report["verdicts"])
    assert report["figures"]["roar"] == "roar.png" and (out / "roar.png").read_bytes()[:4] == b"\x89PNG"
    # the default floor (0.8) flags the same weak evaluator: no curve, a note instead
    out2 = tmp_path / "flagged"
    assert main(["demo", "--base", str(quick_world), "--out", str(out2), "--seeds", "1", *FAST]) == 0
    flagged = json.loads((out2 / "report.json").read_text())["roar"]
    assert flagged["below_floor"] and "curves" not in flagged and "below the floor 0.80" in flagged["skipped"]
    assert "**Not a result:**" in (out2 / "report.md").read_text() and (out2 / "roar.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--study", "--roar"], "--roar runs with the demo, not with --study"),
    (["--roar", "--roar-fractions", "0.5", "1.2"], "ROAR fractions must lie in (0, 1)"),
    (["--roar", "--roar-repeats", "0"], "ROAR repeats must be >= 1"),
    (["--roar", "--roar-floor", "2"], "the ROAR floor is an accuracy in [0, 1]"),
])
def test_demo_refuses_bad_roar_options(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err


def test_separation_combines_the_spread_of_both_curves_with_the_test_images():
    original = [[0.9, 0.5, 0.3], [0.9, 0.52, 0.32]]
    aft = [[0.9, 0.40, 0.20], [0.9, 0.42, 0.22], [0.9, 0.41, 0.21]]
    curves = {"original": {"m": _curve_stats(original)}, "aft": {"m": _curve_stats(aft)}}
    assert curves["original"]["m"]["mean"][1] == pytest.approx(0.51)
    assert curves["original"]["m"]["sd"][1] == pytest.approx(math.sqrt(2) * 0.01)
    s = separation(curves, "aft", "m", [0.0, 0.1, 0.5], n_test=10000)
    p = s["points"][0]
    assert p["delta"] == pytest.approx(0.41 - 0.51)
    se_spread = math.sqrt(0.0002 / 2 + 0.0001 / 3)
    se_images = math.sqrt(0.41 * 0.59 / 10000 + 0.51 * 0.49 / 10000)
    assert p["se"] == pytest.approx(math.sqrt(se_spread ** 2 + se_images ** 2))
    assert p["separate"] and s["removed_mean"]["separate"]
    # the same means on 20 test images: the per-image SE swamps the difference
    few = separation(curves, "aft", "m", [0.0, 0.1, 0.5], n_test=20)
    assert not few["points"][0]["separate"]
