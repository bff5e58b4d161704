"""Attribution metrics with known answers: deletion/insertion, ROAR (retraining), Gini, pointing, energy, sanity."""

import json
import math

import pytest
import torch

from aft_hf.evaluate import (
    LinearProbe, auc, boxes_to_masks, energy_in_mask, evaluate_model, gini, perturbation_curve, pixel_ranking,
    pointing_game, randomisation_check, randomized_copy, remove_top, roar, spearman,
)
from aft_hf.evaluate.report import markdown, write_json
from aft_hf.evaluate.runner import EvaluationError, resolve_metrics
from tests.explain_helpers import region_mask

pytestmark = pytest.mark.usefixtures("single_thread")


def _region_images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    mask = region_mask()
    return x * (1 - mask) + mask, mask  # the region is white, the rest dark noise


def _region_score(mask):
    return lambda images, labels: (images * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum())


def test_deletion_auc_perfect_below_random_and_insertion_above():
    x, mask = _region_images()
    perfect = mask.expand(len(x), -1, -1, -1) + 0.01 * torch.rand(len(x), 1, 32, 32)
    rand = torch.rand(len(x), 1, 32, 32, generator=torch.Generator().manual_seed(1))
    score = _region_score(mask)
    fr, del_perfect = perturbation_curve(score, x, perfect, mode="deletion", steps=10, progress=False)
    _, del_random = perturbation_curve(score, x, rand, mode="deletion", steps=10, progress=False)
    # a blurred start keeps this score's mean brightness: use the constant (mean) start here
    _, ins_perfect = perturbation_curve(score, x, perfect, mode="insertion", steps=10, progress=False, baseline="mean")
    _, ins_random = perturbation_curve(score, x, rand, mode="insertion", steps=10, progress=False, baseline="mean")
    assert fr[0] == 0 and fr[-1] == 1 and del_perfect.shape == (8, 11)
    assert torch.allclose(del_perfect[:, 0], torch.ones(8)) and torch.allclose(ins_perfect[:, -1], torch.ones(8))
    assert auc(fr, del_perfect).mean() < auc(fr, del_random).mean() - 0.15
    assert auc(fr, ins_perfect).mean() > auc(fr, ins_random).mean() + 0.15
    _, lerf_perfect = perturbation_curve(score, x, perfect, mode="deletion", steps=10, progress=False, order="least")
    assert auc(fr, lerf_perfect).mean() > auc(fr, del_random).mean() + 0.15  # least-relevant-first keeps the score


def test_auc_and_ranking_known_values():
    assert torch.allclose(auc([0, 0.5, 1], torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])), torch.tensor([1.0, 0.25]))
    maps = torch.zeros(1, 1, 2, 2)
    maps[0, 0, 1, 0] = 5
    maps[0, 0, 0, 1] = 3
    assert pixel_ranking(maps)[0, :2].tolist() == [2, 1]
    images = torch.ones(1, 3, 2, 2)
    out = remove_top(images, maps, 0.5, torch.zeros(3))
    assert out[0, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def _roar_data(n, seed):
    """Label = brightness of a 2x2 corner (6% of the pixels); the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x[:, :, :2, :2] = (0.5 + 0.3 * (2 * labels.float() - 1)).view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 3, 2, 2, generator=g)
    return x.clamp(0, 1), labels


def test_roar_accuracy_falls_faster_with_the_true_ranking_than_random():
    xtr, ytr = _roar_data(160, 0)
    xte, yte = _roar_data(80, 1)
    truth = torch.zeros(1, 1, 8, 8)
    truth[..., :2, :2] = 1

    def maps(n):
        return truth.expand(n, -1, -1, -1) + 0.01 * torch.rand(n, 1, 8, 8)

    res = roar(xtr, ytr, xte, yte, {"truth": maps(160)}, {"truth": maps(80)}, fractions=(0.1, 0.5),
               evaluator_factory=lambda: LinearProbe(None, max_iter=30), progress=False)
    acc = res["accuracy"]
    assert res["fractions"] == [0.0, 0.1, 0.5]
    assert acc["truth"][0] >= 0.9  # the retrained probe reads the corner before removal
    assert acc["truth"][1] <= 0.7  # corner removed (10% > 6%): back to chance after retraining
    assert acc["random"][1] >= 0.85  # a random 10% leaves most of the corner
    assert sum(acc["truth"]) < sum(acc["random"])


def test_roar_retrains_a_fresh_evaluator_per_point():
    fits = []

    class Counting(LinearProbe):
        def fit(self, images, labels):
            fits.append(images.clone())
            super().fit(images, labels)

    xtr, ytr = _roar_data(40, 2)
    xte, yte = _roar_data(20, 3)
    m = {"a": torch.rand(40, 1, 8, 8)}
    roar(xtr, ytr, xte, yte, m, {"a": torch.rand(20, 1, 8, 8)}, fractions=(0.3, 0.6),
         evaluator_factory=lambda: Counting(None, max_iter=5), progress=False)
    assert len(fits) == 1 + 2 * 2  # the clean baseline + (method, random) x 2 fractions
    assert not torch.equal(fits[0], fits[1])  # trained on the modified train split


def test_gini_known_values():
    one_hot = torch.zeros(1, 1, 10, 10)
    one_hot[0, 0, 3, 4] = 7.0
    assert gini(one_hot).item() == pytest.approx(0.99, abs=1e-6)  # (n - 1) / n
    assert gini(torch.ones(1, 1, 10, 10)).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(torch.tensor([[0.0, 0.0, 1.0, 1.0]])).item() == pytest.approx(0.5)
    assert gini(torch.zeros(1, 1, 4, 4)).item() == 0.0


def test_pointing_game_hit_miss_tolerance_and_empty():
    maps = torch.zeros(3, 1, 20, 20)
    maps[0, 0, 5, 5] = 1  # inside the box
    maps[1, 0, 5, 15] = 1  # 5 px right of the box
    maps[2, 0, 5, 5] = 1
    masks = boxes_to_masks([[2, 2, 10, 10], [2, 2, 10, 10], [0, 0, 0, 0]], 20, 20)
    exact = pointing_game(maps, masks)
    assert exact[0] == 1 and exact[1] == 0 and math.isnan(exact[2])
    tol = pointing_game(maps, masks, tolerance=6)
    assert tol[1] == 1


def test_energy_in_mask_and_chance():
    masks = boxes_to_masks([[0, 0, 10, 20]], 20, 20)
    share, chance = energy_in_mask(torch.ones(1, 1, 20, 20), masks)
    assert share.item() == pytest.approx(0.5) and chance.item() == pytest.approx(0.5)
    share, _ = energy_in_mask(masks * 3, masks)
    assert share.item() == pytest.approx(1.0)


def test_spearman_and_model_randomisation(tiny_encoder, batch):
    a = torch.arange(16.0).view(1, 1, 4, 4)
    assert spearman(a, a).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    rnd = randomized_copy(tiny_encoder, seed=3)
    p0 = dict(tiny_encoder.named_parameters())
    changed = [n for n, p in rnd.named_parameters() if not torch.equal(p, p0[n])]
    assert "vision.visual_projection.weight" in changed
    assert all("norm" not in n for n in changed)  # layer norms kept
    res = randomisation_check(tiny_encoder, lambda enc: enc(batch).view(4, 1, 4, 8))
    assert -1 <= res["spearman_mean"] < 0.9 and len(res["spearman"]) == 4
    assert randomisation_check(tiny_encoder, lambda enc: batch[:, :1])["spearman_mean"] == pytest.approx(1.0, abs=1e-4)


def test_metric_registry_errors():
    with pytest.raises(EvaluationError, match="unknown metric 'bleu'"):
        resolve_metrics(["bleu"], have_masks=False)
    with pytest.raises(EvaluationError, match="needs object masks"):
        resolve_metrics(["pointing"], have_masks=False)
    assert resolve_metrics(["gini", "sparseness", "zeroshot"], False) == ["sparseness", "zeroshot"]


def test_evaluate_model_all_metrics_on_the_tiny_model(tiny_encoder, tiny_clip_path, tmp_path):
    from aft_hf.explain import load_text_tower

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    masks = boxes_to_masks([[0, 0, 16, 16]] * 8, 32, 32)
    opts = {"robust": {"eps": [1, 4], "steps": 2}, "roar": {"fractions": [0.5]}, "deletion": {"steps": 4},
            "insertion": {"steps": 4}, "pointing": {"tolerance": 4}, "randomisation": {"max_images": 2}}
    report, ctx = evaluate_model(
        tiny_encoder, load_text_tower(str(tiny_clip_path)), ["red circle", "blue square"], ["a photo of a {}."],
        images, labels, ["zeroshot", "robust", "deletion", "insertion", "roar", "pointing", "energy", "sparseness",
                         "randomisation"], ["saliency", "gradcam"], masks, opts, batch_size=8, progress=False,
        info={"model": "tiny", "text_model": "tiny", "dataset": "rand", "split": "test", "skipped_images": 0,
              "class_names_source": "list"})
    m = report["metrics"]
    assert set(m) >= {"zeroshot_top1", "zeroshot_top5", "robust_top1", "deletion", "insertion", "roar",
                      "pointing_game", "energy_in_mask", "gini", "randomisation_spearman"}
    assert m["zeroshot_top5"] == 1.0  # 2 classes: top-5 is capped at the class count
    assert list(m["robust_top1"]) == ["1/255", "4/255"]
    assert set(m["roar"]["accuracy"]) == {"saliency", "gradcam", "random"}
    assert set(m["pointing_game"]["saliency"]) == {"exact", "tolerance_4px"}
    text = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert text["num_samples"] == 8 and text["methods"] == ["saliency", "gradcam"]
    md = markdown(report)
    assert "ROAR" in md and "pointing game exact" in md and "Gini" in md


def test_markdown_tables_are_well_formed():
    report = {"model": "m", "dataset": "d", "split": "s", "num_samples": 3, "skipped_images": 0, "num_classes": 2,
              "class_names_source": "x", "num_templates": 1, "text_model": "t", "methods": ["saliency"],
              "metrics": {"zeroshot_top1": 0.5, "zeroshot_top5": 1.0, "gini": {"saliency": 0.4}}}
    table = []
    for line in markdown(report).splitlines() + [""]:
        if line.startswith("|"):
            table.append(line.count("|"))
        elif table:
            assert len(set(table)) == 1, table  # header, separator and rows have the same cell count
            table = []
