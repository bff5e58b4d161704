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
