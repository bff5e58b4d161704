"""The evaluate and explain CLIs: every bad option reported at once before loading anything, each full
CLIP with its own text tower, and a warning for all-zero Grad-CAM maps."""

import json

import pytest
import torch

from aft_hf.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from aft_hf.data import write_shapes_imagefolder

    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes") / "data", num_images=8, size=40)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a CLI gets as far as loading a model."""
    import aft_hf.explain.loading as loading

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(loading, "load_image_encoder", boom)
    monkeypatch.setattr(loading, "is_full_clip", boom)


def _error(capsys) -> str:
    """The CLI's one-line error (after any progress bars of what loaded first), no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("aft-hf ")
    return last


def test_evaluate_reports_every_bad_option_before_loading(tmp_path, capsys, no_loading):
    rc = main(["evaluate", "--model", "nowhere/model", "--dataset", "builtin:shapes", "--out", str(tmp_path),
               "--deletion-steps", "0", "--batch-size", "0", "--roar-fractions", "0.5", "1.5", "--eps", "-4", "2",
               "0.0157", "300",
               "--attack-steps", "-1", "--attack-restarts", "0", "--attack-targets", "-2", "--max-samples", "0",
               "--metrics", "zeroshot", "nonsense", "--methods", "lime", "--templates", "a {} {x}"])
    assert rc == 2
    err = _error(capsys)
    for needed in ("13 problems", "--deletion-steps must be >= 1, got 0", "--batch-size must be >= 1, got 0",
                   "--roar-fractions must lie strictly between 0 and 1", "got 1.5",
                   "--eps: budgets are >= 0 (1/255 units), got -4", "--eps: eps is in 1/255 units: 0.0157 means",
                   "did you mean 4.0035", "--eps: norm 'linf' bounds each pixel: eps is in 1/255 units, at most 255",
                   "--attack-steps must be >= 1, got -1", "--attack-restarts", "--attack-targets",
                   "--max-samples must be >= 1, got 0", "unknown metric 'nonsense'",
                   "unknown attribution method 'lime'",
                   "braces other than"):
        assert needed in err, needed
    assert main(["evaluate", "--model", "m", "--dataset", "d", "--out", str(tmp_path), "--max-samples", "-1"]) == 2
    assert "--max-samples must be >= 1, got -1" in _error(capsys)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", "m", "--dataset", "d", "--out", str(tmp_path), "--robust-attack", "fgsm"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fgsm'" in capsys.readouterr().err


def test_explain_reports_every_bad_option_before_loading(tmp_path, capsys, no_loading, shapes):
    rc = main(["explain", "--model", "nowhere/model", "--images", str(shapes), "--out", str(tmp_path),
               "--max-images", "0", "--batch-size", "-3", "--layer", "", "--prompt", "a {} {x}",
               "--methods", "saliency", "lime"])
    assert rc == 2
    err = _error(capsys)
    for needed in ("5 problems", "--max-images must be >= 1, got 0", "--batch-size must be >= 1, got -3",
                   "--layer is empty", "braces other than", "unknown attribution method 'lime'"):
        assert needed in err, needed
    rc = main(["explain", "--model", "m", "--images", str(shapes), "--out", str(tmp_path),
               "--reference-image", str(tmp_path / "MISSING.png")])
    assert rc == 2 and "--reference-image" in _error(capsys)
    rc = main(["explain", "--model", "m", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert rc == 2 and "does not exist" in _error(capsys)
    assert main(["explain", "--model", "m", "--images", str(shapes), "--out", str(tmp_path), "--max-images", "-1"]) == 2
    assert "--max-images must be >= 1, got -1" in _error(capsys)


@pytest.mark.parametrize("command, options, message", [
    ("evaluate", ["--robust-attack", "pgd", "--attack-targets", "3"],
     "--attack-restarts and --attack-targets apply to --robust-attack apgd only (pgd runs once, untargeted)"),
    ("evaluate", ["--robust-attack", "pgd", "--attack-restarts", "5"], "apply to --robust-attack apgd only"),
    ("evaluate", ["--roar-evaluator", "probe", "--roar-epochs", "50"],
     "--roar-evaluator probe has no epochs: leave it out"),
    ("explain", ["--layer", "penultimate", "--methods", "saliency"], "--methods has no gradcam"),
    ("explain", ["--caption", "a dog", "--labels", "cat"], "which --caption replaces"),
    ("explain", ["--caption", "a dog", "--prompt", "a sketch of a {}."], "which --caption replaces"),
])
def test_options_that_would_be_silently_ignored_are_refused(tmp_path, capsys, no_loading, shapes, command, options,
                                                              message):
    source = ["--dataset", str(shapes)] if command == "evaluate" else ["--images", str(shapes)]
    assert main([command, "--model", "m", *source, "--out", str(tmp_path / "o"), *options]) == 2
    assert message in _error(capsys)


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """Two tiny CLIPs whose text towers differ: other seeds, other widths (text hidden size and projection)."""
    from transformers import CLIPModel

    from aft_hf.model import save_tiny_clip

    root = tmp_path_factory.mktemp("two_clips")
    a = save_tiny_clip(root / "a", seed=1, projection_dim=16)
    b = save_tiny_clip(root / "b", seed=2, projection_dim=24)
    model = CLIPModel.from_pretrained(b)  # widen B's text tower: hidden 48 instead of 32
    cfg = model.config
    cfg.text_config.hidden_size, cfg.text_config.intermediate_size = 48, 96
    torch.manual_seed(3)
    CLIPModel(cfg).save_pretrained(b)
    return a, b


@pytest.mark.slow
def test_each_full_clip_uses_its_own_text_tower(two_clips, shapes, tmp_path, capsys):
    from aft_hf.explain import load_text_tower

    a, b = two_clips
    assert load_text_tower(str(b)).text_model.config.hidden_size == 48
    args = ["--dataset", str(shapes), "--metrics", "zeroshot", "--methods", "saliency"]
    assert main(["evaluate", "--model", str(b), *args, "--out", str(tmp_path / "alone")]) == 0
    assert main(["evaluate", "--model", str(a), "--model", str(b), *args, "--out", str(tmp_path / "both")]) == 0
    alone = json.loads((tmp_path / "alone" / "report.json").read_text())
    beside = {}
    for path in (tmp_path / "both").glob("*/report.json"):
        report = json.loads(path.read_text())
        beside[report["model"]] = report
    assert beside[str(b)]["text_model"] == str(b) and beside[str(a)]["text_model"] == str(a)
    assert beside[str(b)]["metrics"] == alone["metrics"]  # B scores the same alone and beside A
    comparison = (tmp_path / "both" / "comparison.md").read_text()
    assert f"| `{a}` |" in comparison and f"| `{b}` |" in comparison
    accuracy = f"{100 * alone['metrics']['zeroshot_top1']:.1f}%"  # printed as report.md prints it
    assert accuracy in (tmp_path / "alone" / "report.md").read_text()
    assert f"| `{b}` | `{b}` | {accuracy} |" in comparison
    # the same --out again with one model: the two-model run's comparison and sub-folders go, the user's file stays
    (tmp_path / "both" / "notes.txt").write_text("mine")
    assert len([p for p in (tmp_path / "both").iterdir() if p.is_dir()]) == 2
    assert main(["evaluate", "--model", str(b), *args, "--out", str(tmp_path / "both")]) == 0
    left = sorted(p.name for p in (tmp_path / "both").iterdir())
    assert left == sorted([".aft_hf_results.json", "examples.png", "notes.txt", "report.json", "report.md"])
    assert json.loads((tmp_path / "both" / "report.json").read_text())["metrics"] == alone["metrics"]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(a), "--model", str(b), "--images", str(shapes), "--max-images", "2",
                 "--methods", "saliency", "--out", str(out)]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["text_models"] == [str(a), str(b)] and summary["text_model"] is None
    # --text-model overrides for every model: A's tower (width 16) cannot serve B's images (width 24)
    assert main(["evaluate", "--model", str(b), *args, "--text-model", str(a), "--out", str(tmp_path / "t")]) == 2
    assert "24 dimensions but the text tower of" in _error(capsys)


def test_vision_only_model_needs_text_model(tiny_clip_path, tiny_vision_path, shapes, tmp_path, capsys):
    rc = main(["explain", "--model", str(tiny_clip_path), "--model", str(tiny_vision_path), "--images", str(shapes),
               "--out", str(tmp_path)])
    assert rc == 2 and "vision-only model(s) " + str(tiny_vision_path) in _error(capsys)


@pytest.mark.slow
def test_gradcam_at_the_last_block_output_warns(tiny_clip_path, shapes, tmp_path, caplog):
    out = tmp_path / "cam"
    rc = main(["explain", "--model", str(tiny_clip_path), "--images", str(shapes), "--max-images", "2",
               "--methods", "gradcam", "--layer", "vision_model.encoder.layers.1", "--out", str(out)])
    assert rc == 0
    (warning,) = json.loads((out / "explain.json").read_text())["warnings"]
    assert "all zero" in warning and "CLS" in warning and "all zero" in caplog.text
    rc = main(["explain", "--model", str(tiny_clip_path), "--images", str(shapes), "--max-images", "2",
               "--methods", "gradcam", "--out", str(out)])
    assert rc == 0 and json.loads((out / "explain.json").read_text())["warnings"] == []


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_a_model_that_cannot_be_read_is_named_as_such(tmp_path, capsys, shapes, command):
    """A mistyped model folder is reported as missing, not as a vision-only model needing --text-model."""
    data = ["--images", str(shapes)] if command == "explain" else ["--dataset", str(shapes)]
    assert main([command, "--model", str(tmp_path / "no_such_model"), *data, "--out", str(tmp_path / "o")]) == 2
    err = _error(capsys)
    assert "no_such_model': no such folder" in err and "--text-model" not in err


@pytest.mark.slow
def test_models_sharing_a_geometry_share_the_prepared_images(shapes, tmp_path, caplog):
    """Three models, the last two at another size than the first: the images are prepared again once for that size
    (one warning), not once per model."""
    import logging

    from aft_hf.model import save_tiny_clip

    small = save_tiny_clip(tmp_path / "small")
    large = [save_tiny_clip(tmp_path / f"large{i}", seed=i, image_size=48) for i in range(2)]
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--model", str(small), "--model", str(large[0]), "--model", str(large[1]),
                     "--dataset", str(shapes), "--metrics", "zeroshot", "--methods", "saliency",
                     "--out", str(tmp_path / "three")]) == 0
    again = [r.getMessage() for r in caplog.records if "prepares images differently" in r.getMessage()]
    assert len(again) == 1 and str(large[0]) in again[0]


def test_evaluate_refuses_options_of_metrics_it_does_not_run(tmp_path, capsys, no_loading):
    """--eps, --attack-steps, --robust-attack with --metrics zeroshot, or --roar-epochs without roar, were ignored
    silently; --metrics given twice kept only the last list."""
    rc = main(["evaluate", "--model", "m", "--dataset", "builtin:shapes", "--out", str(tmp_path / "o"), "--metrics",
               "zeroshot", "--eps", "8", "--attack-steps", "3", "--robust-attack", "pgd", "--roar-epochs", "2"])
    err = _error(capsys)
    assert rc == 2 and "2 problems" in err
    assert ("--eps, --robust-attack, --attack-steps only apply to the robust metric, which --metrics does not run"
            in err and "--roar-epochs only applies to the roar metric" in err)
    from aft_hf.cli import build_parser
    from aft_hf.commands.evaluate import _check_options

    args = build_parser().parse_args(["evaluate", "--model", "m", "--dataset", "d", "--out", str(tmp_path / "o"),
                                      "--metrics", "zeroshot", "robust", "--metrics", "gini", "--eps", "8"])
    assert _check_options(args) == ["zeroshot", "robust", "gini"]  # both lists, and --eps belongs to robust
