"""How report.md, report.json's results and the figures say to read a number: its direction, its spread."""

import pytest

from aft_hf.evaluate.report import markdown
from aft_hf.results import PERTURBATION_BETTER, legacy_results, perturbation_better

REPORT = {"model": "tiny", "text_model": "tiny", "dataset": "rand", "split": "test", "num_samples": 8,
          "skipped_images": 0, "num_classes": 2, "class_names_source": "list", "num_templates": 1,
          "methods": ["saliency"]}


def _perturbation(mode: str, order: str) -> dict:
    """A deletion/insertion entry as the metric writes it: saliency 0.70, the random ranking 0.29."""
    return {mode: {"fractions": [0.0, 0.5, 1.0], "order": order, "baseline": "zero", "clean_probability": 0.5,
                   "normalised": "divided by clean_probability",
                   "methods": {"saliency": {"auc": 0.70, "curve": [1.0, 0.9, 0.5], "random_auc": 0.29,
                                            "auc_minus_random": 0.41},
                               "random": {"auc": 0.29, "curve": [1.0, 0.3, 0.1]}}}}


@pytest.mark.parametrize("mode, order, better", [("deletion", "most", "lower"), ("insertion", "most", "higher"),
                                                 ("deletion", "least", "higher"), ("insertion", "least", "lower")])
def test_the_faithful_direction_follows_mode_and_order(mode, order, better):
    # least relevant first, a faithful map keeps the deletion score HIGH (and the insertion score low)
    assert perturbation_better(mode, order) == better
    result = legacy_results(_perturbation(mode, order))[mode]
    assert {s.better for s in result.scalars} == {better}  # report.json's results
    ahead = "negative" if better == "lower" else "positive"
    text = markdown({**REPORT, "metrics": _perturbation(mode, order)})
    assert f"({better} better)" in text and f"({ahead} = better than random)" in text
    assert ("lower" if better == "higher" else "higher") + " better" not in text
    assert f"({better} AUC = better)" in result.curves[0].title  # the figure's title
    assert ("least relevant first" in text) == (order == "least")


def test_a_report_without_order_reads_most_relevant_first():
    data = _perturbation("deletion", "most")
    del data["deletion"]["order"]
    assert {s.better for s in legacy_results(data)["deletion"].scalars} == {"lower"}
    assert set(PERTURBATION_BETTER) == {(m, o) for m in ("deletion", "insertion") for o in ("most", "least")}


def _roar(per_seed_intact, floor=0.0, below=False) -> dict:
    """A ROAR entry as :func:`aft_hf.evaluate.roar` writes it, two evaluator seeds per point."""
    mean = sum(per_seed_intact) / len(per_seed_intact)
    r = {"fractions": [0.0, 0.3, 0.6], "intact_accuracy": mean, "intact_accuracy_per_seed": per_seed_intact,
         "evaluator_seeds": [0, 1], "floor": floor, "below_floor": below, "test_images": 32,
         "evaluator": "small CNN", "evaluator_kind": "cnn", "split": {"train": 32, "test": 32}}
    if below:
        return {"roar": {**r, "skipped": f"the evaluator reaches {mean:.3f} on intact held-out images, below the floor"}}
    return {"roar": {**r, "accuracy": {"saliency": [mean, 0.2, 0.1], "random": [mean, 0.22, 0.15]},
                     "accuracy_sd": {"saliency": [0.106, 0.05, 0.02], "random": [0.106, 0.04, 0.01]},
                     "per_seed": {}}}


def test_roar_spread_over_evaluator_seeds_is_shown():
    result = legacy_results(_roar([0.31, 0.16]))["roar"]
    intact = result.scalars[0]
    assert intact.value == pytest.approx(0.235) and intact.sd == pytest.approx(0.10607, abs=1e-4)
    text = markdown({**REPORT, "metrics": _roar([0.31, 0.16])})
    assert "intact images 0.235 ± 0.106 over 2 evaluator seeds (floor 0.00)" in text
    assert "| 23.5% ± 10.6% |" in text  # the intact accuracy's row
    assert "| 20.0% ± 5.0% | 22.0% ± 4.0% |" in text  # the 30% point, saliency and random
    curve = result.curves[0]
    assert curve.spread["saliency"] == [0.106, 0.05, 0.02] and "intact 0.23 ± 0.11" in curve.y_label
    one = legacy_results({"roar": {**_roar([0.3])["roar"], "accuracy_sd": {"saliency": [None] * 3}}})["roar"]
    assert one.scalars[0].sd is None and not one.curves[0].spread  # one seed: no spread to show


def test_roar_below_the_floor_keeps_a_panel_that_says_so():
    result = legacy_results(_roar([0.2, 0.1], floor=0.8, below=True))["roar"]
    (curve,) = result.curves
    assert not curve.series and curve.absent.startswith("no curve: the evaluator reaches 0.150")
    assert any("**Not a result:**" in n for n in result.notes)
