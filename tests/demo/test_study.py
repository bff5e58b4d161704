"""The study's cells on known values: means over seeds, paired deltas against the original, and error bars
from the seeds (several) or from the images (one seed)."""

import math

import pytest
import torch

from aft_hf.demo.study import STUDY_METRICS, summarise


def _run(per_image: list[float], clean: float, robust: float) -> dict:
    return {"per_image": {"saliency": {m: torch.tensor(per_image) for m in STUDY_METRICS}},
            "accuracy": {"clean": clean, "robust": {"1/255": robust}}}


def test_two_seeds_give_means_paired_deltas_and_seed_errors():
    original = _run([0.4, 0.4], 0.9, 0.2)
    runs = [_run([0.5, 0.7], 0.8, 0.5), _run([0.6, 0.6], 0.6, 0.7)]
    objectives = [{"adversarial": torch.tensor([1.0, 3.0]), "clean": torch.tensor([0.1, 0.3])},
                  {"adversarial": torch.tensor([2.0, 2.0]), "clean": torch.tensor([0.2, 0.2])}]
    cell = summarise(original, {"adversarial": torch.tensor([4.0, 4.0])}, runs, objectives, eps=1.0)
    energy = cell["metrics"]["saliency"]["energy"]
    assert energy["value"]["mean"] == pytest.approx(0.6) and energy["value"]["se"] == pytest.approx(0.0, abs=1e-7)
    assert energy["delta"]["mean"] == pytest.approx(0.2) and energy["delta"]["per_seed"] == pytest.approx([0.2, 0.2])
    clean = cell["accuracy"]["clean"]
    assert clean["mean"] == pytest.approx(0.7) and clean["se"] == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    assert cell["accuracy"]["at_trained"] is cell["accuracy"]["1/255"]
    assert cell["accuracy"]["1/255"]["mean"] == pytest.approx(0.6)
    objective = cell["objective"]
    assert objective["original"] == 4.0 and objective["adversarial"]["mean"] == pytest.approx(2.0)
    assert objective["delta"]["mean"] == pytest.approx(-2.0) and objective["clean"]["mean"] == pytest.approx(0.2)
    assert all(d["improved"] == 1.0 for d in objective["per_seed_paired"])  # lower objective is better


def test_one_seed_takes_its_error_bars_from_the_images():
    original = _run([0.4, 0.4, 0.4, 0.4], 0.5, 0.25)
    runs = [_run([0.5, 0.7, 0.3, 0.5], 0.75, 0.5)]
    objectives = [{"adversarial": torch.tensor([1.0, 1.0, 1.0, 1.0]), "clean": torch.tensor([0.0] * 4)}]
    cell = summarise(original, {"adversarial": torch.tensor([2.0] * 4)}, runs, objectives, eps=4.0)
    gini = cell["metrics"]["saliency"]["gini"]
    per_image_se = torch.tensor([0.5, 0.7, 0.3, 0.5]).std().item() / 2
    assert gini["value"]["se"] == pytest.approx(per_image_se) and gini["delta"]["se"] == pytest.approx(per_image_se)
    assert cell["accuracy"]["clean"]["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))  # binomial over 4 images
    assert cell["accuracy"]["at_trained"] is None  # no robust accuracy measured at the trained 4/255
