"""`aft-hf demo` end to end on a quickly pretrained world CLIP, and its statistics on known values."""

import json
import math

import pytest
import torch
import yaml
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


FAST = ["--train-images", "32", "--eval-images", "6", "--robust-steps", "1", "--max_steps", "2",
        "--warmup_steps", "1", "--optim.batch_size", "8", "--attack.steps", "1"]


@pytest.mark.slow
def test_short_demo_writes_every_promised_file(quick_world, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--base", str(quick_world), "--out", str(out), "--seeds", "2", *FAST])
    assert rc == 0
    for name in ("report.json", "report.md", "saliency_grid.png", "metrics.png", "hub_folder/README.md",
                 "hub_folder/model.safetensors", "hub_folder/assets/saliency_grid.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    # both threat models by default, each with its own noise control of the same budget
    assert report["variants"] == ["aft_linf", "control_linf", "aft_huber", "control_huber"]
    assert report["seeds"] == [0, 1]
    assert [t["label"] for t in report["threats"]] == ["linf 4/255", "huber 1/255 + 1/255"]
    assert "huber 1/255 + 1/255" in report["settings"]["attack"]
    control = yaml.safe_load((out / "runs" / "control_huber_seed0" / "final" / "aft_config.yaml").read_text())
    assert control["attack"]["norm"] == "huber" and control["attack"]["mode"] == "noise"
    assert control["attack"]["eps"] == 1 and control["attack"]["eps2"] == 1
    row = report["metrics"]["saliency"]["energy"]
    assert len(row["aft_huber"]["per_seed"]) == 2 and len(row["delta_control_linf"]["per_seed_paired"]) == 2
    assert 0 <= report["chance_energy"] <= 1
    # robust accuracy by APGD, and the attack recorded
    s = report["settings"]
    assert s["robust_attack"] == "apgd" and s["robust_steps"] == 1 and s["robust_targets"] == 3
    md = (out / "report.md").read_text()
    assert "APGD-CE+APGD-T" in md and "1 iterations" in md
    # the AFT objective: original vs each fine-tune, per threat model, paired
    for norm in ("linf", "huber"):
        obj = report["objective"][norm]
        assert obj["original"]["clean"] < 1e-9 < obj["original"]["adversarial"]
        assert len(obj[f"aft_{norm}"]["adversarial"]["per_seed"]) == 2
        d = obj[f"delta_aft_{norm}"]["per_seed_paired"][0]
        assert d["n"] == 6 and math.isclose(
            obj[f"aft_{norm}"]["adversarial"]["per_seed"][0] - obj["original"]["adversarial"], d["mean"], abs_tol=1e-5)
        assert f"{obj['original']['adversarial']:.3f}" in md
    assert f"{row['original']:.3f}" in md and f"{row['delta_aft_linf']['mean']:.3f} ± " in md
    assert report["verdicts"] and all(v in md for v in report["verdicts"])
    assert any("AFT objective" in v for v in report["verdicts"])
    for eps in ("1/255", "2/255", "4/255"):
        assert report["accuracy"]["robust"][eps]["original"] <= report["accuracy"]["clean"]["original"] + 1e-9
    card = ModelCard.load(out / "hub_folder" / "README.md")
    top1 = [r.metric_value for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert top1 and math.isclose(top1[0], report["accuracy"]["clean"]["aft_linf"]["per_seed"][0], abs_tol=1e-9)
    assert "APGD" in card.text
    assert "Verdict" in capsys.readouterr().out  # the CLI prints the report


@pytest.mark.slow
def test_demo_study_writes_dose_response(quick_world, tmp_path, capsys):
    out = tmp_path / "study"
    rc = main(["demo", "--study", "--eps", "2", "1", "--norms", "linf", "huber", "--base", str(quick_world),
               "--out", str(out), "--seeds", "1", *FAST])
    assert rc == 0
    for name in ("study.json", "study.md", "dose_response.png"):
        assert (out / name).is_file(), name
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["eps"] == [1.0, 2.0] and study["settings"]["methods"] == ["saliency"]
    assert set(study["original"]["accuracy"]["robust"]) == {"1/255", "2/255"}
    md = (out / "study.md").read_text()
    for norm in ("linf", "huber"):
        assert list(study["results"][norm]) == ["1", "2"]
        for eps, cell in study["results"][norm].items():
            assert cell["accuracy"]["at_trained"] == cell["accuracy"][f"{eps}/255"]
            assert cell["objective"]["original"] > 0 and len(cell["objective"]["adversarial"]["per_seed"]) == 1
            energy = cell["metrics"]["saliency"]["energy"]["delta"]
            assert f"{energy['mean']:.3f} ± {energy['se']:.3f}" in md
        assert f"| {norm} | 2/255 | {study['results'][norm]['2']['objective']['original']:.3f}" in md
    # the larger budget's attack reaches a larger distance on the same original
    linf = study["results"]["linf"]
    assert linf["2"]["objective"]["original"] > linf["1"]["objective"]["original"]
    cfg = yaml.safe_load((out / "runs" / "huber_eps2_seed0" / "final" / "aft_config.yaml").read_text())
    assert cfg["attack"]["norm"] == "huber" and cfg["attack"]["eps"] == 2 and cfg["attack"]["eps2"] == 2
    assert "dose_response.png" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_tecoa_arm(quick_world, tmp_path, capsys):
    """`--objectives embedding tecoa`: TeCoA is one more arm, trained on the world's labels, measured alike."""
    out = tmp_path / "demo"
    assert main(["demo", "--objectives", "embedding", "tecoa", "--norms", "linf", "--no-control", "--base",
                 str(quick_world), "--out", str(out), "--seeds", "1", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["aft_linf", "tecoa_linf"]
    assert report["settings"]["objectives"] == ["embedding", "tecoa"]
    cfg = yaml.safe_load((out / "runs" / "tecoa_linf_seed0" / "final" / "aft_config.yaml").read_text())
    assert cfg["objective"] == "tecoa" and cfg["data"]["templates"] == "a photo of a {}"
    assert cfg["attack"]["norm"] == "linf" and cfg["attack"]["eps"] == 4  # the same attack as the AFT arm
    assert "tecoa_linf" in report["accuracy"]["clean"] and "delta_tecoa_linf" in report["metrics"]["saliency"]["energy"]
    assert "tecoa_linf" in report["objective"]["linf"]
    md = (out / "report.md").read_text()
    assert "tecoa linf" in md and "tecoa changed it by" in md
    assert "tecoa" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--eps", "1", "2"], "add --study"), (["--eps", "0"], "--eps must be > 0"), (["--eps", "0.0157"], "did you mean 4.0035"),
    (["--robust-steps", "0"], "must be >= 1"), (["--objectives", "tecoa"], "must include embedding"),
    (["--objective", "tecoa"], "use --objectives"),
])
def test_demo_rejects_bad_budgets(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err


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


def test_flip_analysis_counts_colour_and_shape_flips():
    from aft_hf.demo.diagnose import flip_analysis
    from aft_hf.demo.measure import EvalSet

    torch.manual_seed(0)
    names = ["red circle", "red square", "blue circle", "blue square"]
    weight = torch.randn(3, 4)
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4, bias=False))
    encoder[2].weight.data = weight.T.contiguous()
    images = torch.rand(12, 3, 8, 8)
    classes = torch.eye(4)
    with torch.no_grad():
        labels = (torch.nn.functional.normalize(encoder(images), dim=-1) @ classes.T).argmax(1)
    data = EvalSet(images, torch.ones(12, 1, 8, 8), labels, classes, 10.0)
    none = flip_analysis(encoder, data, names, eps=0, iterations=2)
    assert none["clean_correct"] == 12 and sum(none["flips"].values()) == 0 and none["robust_ce"] == 1.0
    assert none["clean_margin_mean"] > 0
    big = flip_analysis(encoder, data, names, eps=255, iterations=10)
    flipped = sum(big["flips"].values())
    assert flipped > 0 and math.isclose(big["robust_ce"], (12 - flipped) / 12)
    assert sum(c for _, c in big["top_pairs"]) <= flipped and " -> " in big["top_pairs"][0][0]


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    """The demo never writes into (or replaces) someone else's non-empty folder."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("important")
    assert main(["demo", "--out", str(mine), "--seeds", "1", "--eval-images", "4", "--train-images", "8"]) == 2
    assert "not written by aft_hf" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("args, message", [
    (["--seed", "2"], "--seed: the demo sets it for each run; use --seeds N"),  # not abbreviated to --seeds
    (["--output_dir", "elsewhere"], "--out OUT"),
    (["--model.name_or_path", "openai/clip-vit-base-patch16"], "use --base FOLDER"),
    (["--data.dataset", "imagefolder"], "--train-images N"),
    (["--attack.mode=noise"], "--no-control"),
    (["--sedes", "2"], "unknown option '--sedes'; did you mean --seeds?"),  # not the config field --seed
    (["--no_control"], "did you mean --no-control?"),
])
def test_demo_refuses_overrides_it_would_replace_and_names_its_own_option(tmp_path, capsys, args, message):
    """Fields the demo sets for every run would swallow an override silently; a mistyped demo option is
    named, not the config field it resembles. Both before anything is written."""
    assert main(["demo", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_study_error_bars_combine_seeds_and_images():
    """Seeds share the held-out images: the per-image SE is shown beside the seed SE and both enter the bars."""
    import math

    from aft_hf.demo.study_report import binomial_se, combined_se, images_se, study_markdown

    part = {"delta": {"mean": 0.03, "se": 0.003, "per_seed": [0.027, 0.03, 0.033]},
            "per_seed_paired": [{"mean": 0.027, "se": 0.006}, {"mean": 0.03, "se": 0.008}, {"mean": 0.033, "se": 0.0}]}
    assert images_se(part) == pytest.approx(math.sqrt((0.006 ** 2 + 0.008 ** 2) / 3))
    assert combined_se(part["delta"], 0.004) == pytest.approx(0.005)  # sqrt(0.003^2 + 0.004^2)
    one = {"mean": 0.03, "se": 0.004, "per_seed": [0.03]}  # one seed: its SE already is the per-image one
    assert combined_se(one, 0.004) == pytest.approx(0.004)
    assert binomial_se(0.5, 64) == pytest.approx(0.0625)
    acc = {"mean": 0.5, "se": 0.01, "per_seed": [0.49, 0.5, 0.51]}
    cell = {"objective": {"original": 1.0, "adversarial": dict(part["delta"]), **part},
            "accuracy": {"clean": acc, "at_trained": acc, "1/255": acc},
            "metrics": {"saliency": {k: part for k in ("energy", "gini", "pointing", "pointing_tol")}}}
    study = {"settings": {"eval_images": 64, "seeds": 3, "steps": 100, "robust_attack": "pgd",
                          "robust_attack_name": "PGD"},
             "original": {"accuracy": {"clean": 0.9, "robust": {"1/255": 0.4}}, "chance_energy": 0.2,
                          "metrics": {"saliency": {"energy": 0.4, "gini": 0.6, "pointing": 0.4, "pointing_tol": 0.7}}},
             "results": {"linf": {"1": cell}}, "wall_time_s": 1.0}
    md = study_markdown(study)
    assert "0.030 ± 0.003 [0.006]" in md  # Δ energy: seed SE, then the per-image SE in brackets
    assert "0.400 → 0.500 ± 0.010 [0.062]" in md


@pytest.mark.slow
def test_demo_rerun_with_another_configuration_leaves_no_earlier_runs(quick_world, tmp_path):
    """The issue: a rerun into the same --out kept the earlier configuration's runs (and its training
    images), and `--no-control` still wrote "controls: uniform noise of the same budget"."""
    out = tmp_path / "demo"
    fast = [a for a in FAST if a not in ("--train-images", "32")]
    assert main(["demo", "--base", str(quick_world), "--out", str(out), "--norms", "linf", "--train-images", "32",
                 "--methods", "saliency", *fast]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["aft_linf_seed0", "control_linf_seed0"]
    assert "controls: uniform noise of the same budget" in (out / "report.md").read_text()
    assert main(["demo", "--base", str(quick_world), "--out", str(out), "--norms", "linf", "--no-control",
                 "--train-images", "16", "--methods", "saliency", *fast]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["aft_linf_seed0"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["world_train_seed1000_n16"]
    md = (out / "report.md").read_text()
    assert "uniform noise" not in md and "no noise controls (--no-control)" in md
