"""comparison.md of several models: the plain results, the per-method attribution scalars, the reference levels."""

from aft_hf.commands.evaluate import _write_comparison


def _report(model: str, gini: float, deletion: float, intact_seeds: list) -> dict:
    intact = sum(intact_seeds) / len(intact_seeds)
    roar = {"fractions": [0.0, 0.5], "intact_accuracy": intact, "intact_accuracy_per_seed": intact_seeds,
            "floor": 0.0, "below_floor": False, "evaluator": "small CNN trained from scratch", "evaluator_kind": "cnn",
            "split": {"train": 8, "test": 8}, "accuracy": {"saliency": [intact, 0.25], "random": [intact, 0.5]},
            "accuracy_sd": {"saliency": [None, None], "random": [None, None]}}
    deletion_entry = {"fractions": [0.0, 1.0], "order": "most", "baseline": "zero", "clean_probability": 0.5,
                      "methods": {"saliency": {"auc": deletion, "curve": [1.0, 0.1], "random_auc": 0.4,
                                               "auc_minus_random": deletion - 0.4},
                                  "random": {"auc": 0.4, "curve": [1.0, 0.3]}}}
    return {"schema_version": 1, "model": model, "text_model": model, "figures": {},
            "metrics": {"zeroshot_top1": 0.5, "gini": {"saliency": gini}, "deletion": deletion_entry, "roar": roar}}


def test_comparison_shows_every_method_scalar_per_model_and_the_data_apart(tmp_path):
    reports = {"A": _report("a", 0.41, 0.2, [0.6, 0.4]), "B": _report("b", 0.63, 0.3, [0.6, 0.4])}
    _write_comparison(reports, {"A": "A", "B": "B"}, tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    assert "| metric | setting | better | A | B |" in text
    assert "| Gini sparseness of the map | saliency |  | 0.410 | 0.630 |" in text
    assert "| Deletion AUC | saliency | lower | 0.200 | 0.300 |" in text
    assert "| Deletion AUC | random | lower | 0.400 | 0.400 |" in text
    assert "| ROAR accuracy (evaluator retrained) | saliency @ 0.5 | lower | 25.0% | 25.0% |" in text
    head = text.split("## Attribution quality")[0]
    assert "Zero-shot top-1 accuracy" in head and "intact" not in head  # the CNN's intact accuracy is the data's
    reference = text.split("## Reference levels")[1]
    assert "| ROAR evaluator accuracy on intact images |  | higher | 50.0% ± 14.1% | 50.0% ± 14.1% |" in reference
    assert (tmp_path / "roar.png").is_file() and (tmp_path / "deletion_insertion.png").is_file()


def test_a_grad_cam_gini_is_not_called_saliency():
    """The Gini row was named "of saliency" for every method, so a card showed a Grad-CAM number as saliency's."""
    from aft_hf.results import legacy_results

    (scalar,) = legacy_results({"gini": {"gradcam": 0.55}})["gini"].scalars
    assert scalar.setting == "gradcam" and "saliency" not in scalar.quantity


def test_the_models_table_is_well_formed_without_any_plain_result(tmp_path):
    """With only attribution metrics (--metrics gini) the models table had 4 header cells over a 3-cell separator."""
    reports = {k: {"schema_version": 1, "model": k.lower(), "text_model": k.lower(), "figures": {},
                   "metrics": {"gini": {"saliency": 0.5}}} for k in ("A", "B")}
    _write_comparison(reports, {"A": "A", "B": "B"}, tmp_path)
    table = (tmp_path / "comparison.md").read_text().split("## Attribution quality")[0].strip().splitlines()[2:]
    assert table == ["| label | model | text tower |", "|---|---|---|", "| A | `a` | `a` |", "| B | `b` | `b` |"]
    assert all(line.count("|") == 4 for line in table)
