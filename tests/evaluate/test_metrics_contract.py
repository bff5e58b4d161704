"""The metric contract: typed options (unknown ones refused), one result schema read by every output."""

import json
from dataclasses import dataclass

import pytest
import torch

from aft_hf.card import build_model_card, eval_results_from_report
from aft_hf.evaluate import EvaluationError, Metric
from aft_hf.evaluate.metrics import METRICS, RobustAccuracy
from aft_hf.results import Curve, MetricResult, Scalar, report_results

INFO = {"model": "tiny", "text_model": "tiny", "dataset": "rand", "split": "test", "skipped_images": 0,
        "class_names_source": "list"}


@dataclass(frozen=True)
class ToyOptions:
    scale: float = 1.0


class ToyBrightness(Metric):
    """A metric that exists only in this test: mean pixel value times ``scale``, per method a made-up curve."""

    name, family = "toy", "complexity"
    citation = "Toy & Example 2026, A Metric Registered in a Test"
    consumes = "the pixels"
    Options = ToyOptions

    def compute(self, ctx):
        value = self.options.scale * ctx.images.mean().item()
        scalars = [Scalar("Toy brightness", value, better="higher"),
                   Scalar("Toy per method", 0.25, "saliency", "method", "saliency", better="lower"),
                   Scalar("Toy per method", 0.5, "random", "method", "random", baseline=True)]
        curve = Curve("toy", "toy curve", [0.0, 0.5, 1.0], {"saliency": [1.0, 0.5, 0.0], "random": [1.0, 0.8, 0.6]},
                      "fraction (%)", "toy score", "toy_curve")
        return MetricResult(self.name, self.family, scalars, [curve], {"scale": self.options.scale},
                            ["The toy metric is a test fixture."], data={"toy_brightness": value})


def test_unknown_option_is_refused_naming_the_metric_and_its_options():
    with pytest.raises(EvaluationError, match=r"metric 'robust' has no option 'step' \(its options: eps, norm, attack, "
                                              r"steps, alpha, restarts, targets, mixed_precision, compile\)"):
        RobustAccuracy(step=5)
    with pytest.raises(EvaluationError, match="metric 'gini' has no option 'tolerance' \\(its options: none\\)"):
        METRICS["gini"](tolerance=3)
    with pytest.raises(EvaluationError, match="metric 'deletion': order must be 'most' or 'least'"):
        METRICS["deletion"](order="middle")
    assert RobustAccuracy(steps=5).options.steps == 5 and RobustAccuracy().options.attack == "apgd"


def test_misspelt_option_stops_evaluate_before_any_work(tiny_encoder, tiny_clip_path):
    from aft_hf.evaluate import evaluate_model
    from aft_hf.explain import load_text_tower

    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    with pytest.raises(EvaluationError, match="metric 'deletion' has no option 'stpes'"):
        evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images, labels,
                       ["deletion"], ["saliency"], None, {"deletion": {"stpes": 4}}, progress=False, info=INFO)


def test_options_for_a_misspelt_metric_stop_evaluate_before_any_work(tiny_encoder, tiny_clip_path):
    """Options of a metric not asked for are allowed (the CLI passes every metric's); a name that is no metric
    (`robustt`) is refused, not dropped, or the robust metric would quietly run with its defaults."""
    from aft_hf.evaluate import evaluate_model
    from aft_hf.explain import load_text_tower

    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    with pytest.raises(EvaluationError, match="options for unknown metric 'robustt'"):
        evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images, labels,
                       ["zeroshot", "robust"], [], None, {"robustt": {"steps": 2}}, progress=False, info=INFO)


def test_write_outputs_without_info_writes_a_report(tiny_encoder, tiny_clip_path, tmp_path, monkeypatch):
    """`info` is optional in evaluate_model, so the report it returns is written without one; the examples
    figure names each method as the reports do."""
    from aft_hf.evaluate import evaluate_model, runner, write_outputs
    from aft_hf.explain import load_text_tower

    columns = []
    monkeypatch.setattr(runner, "attribution_grid", lambda images, maps, *a, **k: columns.extend(maps))
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    report, ctx = evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images,
                                 labels, ["zeroshot"], ["saliency"], None, {"roar": {"repeats": 2}}, progress=False)
    write_outputs(report, ctx, tmp_path / "ev", "")
    text = (tmp_path / "ev" / "report.md").read_text()
    assert text.startswith("# Evaluation\n") and "4 images, 2 classes, 1 prompt template(s)." in text
    assert columns == ["Simple Gradient"]


@pytest.mark.slow
def test_a_metric_registered_in_a_test_reaches_report_and_card(tiny_encoder, tiny_clip_path, tmp_path, monkeypatch):
    from aft_hf.evaluate import evaluate_model, write_outputs
    from aft_hf.explain import load_text_tower

    monkeypatch.setitem(METRICS, "toy", ToyBrightness)
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    report, ctx = evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images,
                                 labels, ["toy", "zeroshot"], ["saliency"], None, {"toy": {"scale": 2.0}},
                                 progress=False, info=INFO)
    write_outputs(report, ctx, tmp_path / "ev", "")
    value = 2.0 * images.mean().item()
    saved = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert saved["metrics"]["toy_brightness"] == pytest.approx(value)
    toy = saved["results"]["toy"]
    assert toy["scalars"][0]["quantity"] == "Toy brightness" and toy["metadata"] == {"scale": 2.0}
    assert saved["citations"]["toy"].startswith("Toy & Example") and saved["metric_inputs"]["toy"] == "the pixels"
    assert saved["figures"]["toy_curve"] == "toy_curve.png" and (tmp_path / "ev" / "toy_curve.png").stat().st_size
    md = (tmp_path / "ev" / "report.md").read_text()
    assert f"| Toy brightness |  | {value:.3f} |" in md and "The toy metric is a test fixture." in md
    assert "| Toy per method | 0.250 | 0.500 |" in md  # columns: saliency, random
    assert "| Zero-shot top-5 accuracy |  | n/a |" in md  # 2 classes: top-5 is not applicable
    card = build_model_card(tiny_clip_path, report=saved).text
    assert f"| Toy brightness |  | {value:.4g} | higher |" in card and "toy with scale `2`" in card
    results, baselines = card.split("## Evaluation")[1].split("Reference levels")
    assert "| Toy per method | saliency | 0.25 | lower |" in results
    assert "| Toy per method | random | 0.5 |" in baselines
    assert "Zero-shot top-5" not in card  # n/a is no number: left out, not shown as 1.0
    assert [r.metric_type for r in eval_results_from_report(dict(saved, dataset="some/dataset"))] == ["accuracy"]


def test_results_round_trip_and_older_reports_read_through_the_registry():
    result = METRICS["gini"].present({"gini": {"saliency": 0.4}})
    again = MetricResult.from_json("gini", json.loads(json.dumps(result.to_json())))
    assert again.scalars == result.scalars and again.family == "complexity"
    old = {"metrics": {"zeroshot_top1": 0.5, "zeroshot_top5": None, "gini": {"saliency": 0.4},
                       "robust_top1": {"4/255": 0.1}, "robust_attack": {"norm": "linf", "steps": 10},
                       "new_metric": 3.5}}
    results = report_results(old)
    assert list(results) == ["zeroshot", "robust", "gini", "new_metric"]
    assert results["robust"].scalars[0].quantity == "Robust zero-shot top-1 accuracy (PGD-10, L-inf)"
    assert [s.value for s in results["zeroshot"].scalars] == [0.5, None]


def test_every_registered_metric_presents_through_its_own_layout():
    from aft_hf.results import FLAT_LAYOUTS

    for name, cls in METRICS.items():
        assert cls.layout is FLAT_LAYOUTS[name] and cls.family == cls.layout.family, name


def test_docs_table_lists_every_option_of_every_metric():
    import dataclasses
    import re
    from pathlib import Path

    table = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text().split("## The contract")[0]
    for name, cls in METRICS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}`") or f", `{name}` |" in line)
        listed = set(re.findall(r"`(\w+)`", row.split("|")[3]))
        fields = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
        assert fields <= listed, f"docs/metrics.md: metric {name} lacks options {sorted(fields - listed)}"
    message = str(pytest.raises(EvaluationError, RobustAccuracy, step=5).value)
    assert message in (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
