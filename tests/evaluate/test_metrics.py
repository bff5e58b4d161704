"""Attribution metrics with known answers: deletion/insertion, ROAR (retraining), Gini, pointing, energy, sanity."""

import json
import math

import pytest
import torch

from aft_hf.evaluate import (
    LinearProbe,
    auc,
    boxes_to_masks,
    energy_in_mask,
    evaluate_model,
    gini,
    perturbation_curve,
    pixel_ranking,
    pointing_game,
    randomisation_check,
    randomized_copy,
    remove_top,
    roar,
    spearman,
)
from aft_hf.evaluate.report import markdown
from aft_hf.evaluate.runner import EvaluationError, resolve_metrics
from aft_hf.files import write_json
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
               evaluator_factory=lambda seed: LinearProbe(None, max_iter=30), progress=False)
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
         evaluator_factory=lambda seed: Counting(None, max_iter=5), progress=False, floor=0.0)
    assert len(fits) == 1 + 2 * 2  # the clean baseline + (method, random) x 2 fractions
    assert not torch.equal(fits[0], fits[1])  # trained on the modified train split


def test_gini_known_values():
    one_hot = torch.zeros(1, 1, 10, 10)
    one_hot[0, 0, 3, 4] = 7.0
    assert gini(one_hot).item() == pytest.approx(0.99, abs=1e-6)  # (n - 1) / n
    assert gini(torch.ones(1, 1, 10, 10)).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(torch.tensor([[0.0, 0.0, 1.0, 1.0]])).item() == pytest.approx(0.5)
    assert gini(torch.zeros(1, 1, 4, 4)).item() == 0.0


def test_default_pointing_tolerance_is_15px_at_224px_scaled():
    from aft_hf.evaluate.metrics import default_tolerance

    assert [default_tolerance(s) for s in (224, 336, 64, 32, 8)] == [15, 22, 4, 2, 1]


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
    # the metric is registered as gini, its report key; sparseness stays an alias
    assert resolve_metrics(["gini", "sparseness", "zeroshot"], False) == ["gini", "zeroshot"]


@pytest.mark.slow
def test_evaluate_model_all_metrics_on_the_tiny_model(tiny_encoder, tiny_clip_path, tmp_path):
    from aft_hf.explain import load_text_tower

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    masks = boxes_to_masks([[0, 0, 16, 16]] * 8, 32, 32)
    # random images: no evaluator reads them, so the ROAR floor is off here to get curves at all
    opts = {"robust": {"eps": [1, 4], "steps": 2}, "roar": {"fractions": [0.5], "floor": 0}, "deletion": {"steps": 4},
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
    assert m["zeroshot_top5"] is None  # 2 classes: top-5 is not applicable (n/a), not a trivial 1.0
    assert list(m["robust_top1"]) == ["1/255", "4/255"]
    assert set(m["roar"]["accuracy"]) == {"saliency", "gradcam", "random"}
    assert set(m["pointing_game"]["saliency"]) == {"exact", "tolerance_4px"}
    text = json.loads(write_json(tmp_path / "r.json", report).read_text())
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


# --------------------------------------------------------------------------- raw maps (A1)

INFO = {"model": "tiny", "text_model": "tiny", "dataset": "rand", "split": "test", "skipped_images": 0,
        "class_names_source": "list"}


def _ctx(encoder, n=4, masks=None, seed=0):
    from aft_hf.evaluate import EvalContext

    g = torch.Generator().manual_seed(seed)
    weights = torch.nn.functional.normalize(torch.randn(2, encoder(torch.rand(1, 3, 32, 32)).shape[-1], generator=g), dim=-1)
    return EvalContext(encoder, weights, torch.rand(n, 3, 32, 32, generator=g), torch.tensor([0, 1] * (n // 2)),
                       ["saliency"], masks=masks, progress=False)


def test_metrics_read_raw_maps_and_figures_the_display_maps(tiny_encoder):
    from aft_hf.explain import SimilarityForward, postprocess

    ctx = _ctx(tiny_encoder)
    x = ctx.images.clone().requires_grad_(True)
    SimilarityForward(tiny_encoder)(x, ctx.targets()).sum().backward()
    expected = x.grad.abs().sum(dim=1, keepdim=True)  # Simple Gradient: |d cos / dx| summed over RGB
    raw = ctx.maps("saliency")
    assert torch.allclose(raw, expected, rtol=1e-4, atol=1e-9)
    assert raw.amax(dim=(1, 2, 3)).lt(0.99).all()  # not min-max scaled
    shown = ctx.display_maps("saliency")
    assert torch.allclose(shown, postprocess(expected, True, 99.0, True), atol=1e-5)  # what the figures show
    assert abs(gini(raw).mean() - gini(shown).mean()) > 0.01  # clipping and min-max change what Gini measures


def test_the_examples_figure_explains_only_the_images_it_shows(tiny_encoder, monkeypatch):
    """`evaluate --metrics zeroshot` on 5000 images with the default --methods must not explain all 5000 for a
    figure of 4; maps a metric already computed are reused, not recomputed."""
    from aft_hf.explain import Explainer, postprocess

    explained = []
    original = Explainer.attribute
    monkeypatch.setattr(Explainer, "attribute", lambda self, x, *a, **k: explained.append(len(x)) or original(
        self, x, *a, **k))
    ctx = _ctx(tiny_encoder, n=8)
    shown = ctx.display_maps("saliency", 2)
    assert explained == [2] and shown.shape == (2, 1, 32, 32)
    full = ctx.maps("saliency")  # a metric asks for every image: computed once, then the figure reuses it
    assert torch.allclose(ctx.display_maps("saliency", 2), postprocess(full[:2], True, 99.0, True))
    assert explained == [2, 8]


def test_evaluate_and_demo_score_the_raw_maps(tiny_encoder, tiny_clip_path):
    from aft_hf.demo.measure import EvalSet, measure
    from aft_hf.explain import load_text_tower

    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    masks = boxes_to_masks([[0, 0, 16, 16]] * 4, 32, 32)
    text = load_text_tower(str(tiny_clip_path))
    report, ctx = evaluate_model(tiny_encoder, text, ["red circle", "blue square"], ["a photo of a {}."], images,
                                 labels, ["sparseness", "pointing", "energy"], ["saliency"], masks, progress=False, info=INFO)
    raw = ctx.maps("saliency")
    m = report["metrics"]
    assert m["gini"]["saliency"] == pytest.approx(gini(raw).mean().item())
    assert m["energy_in_mask"]["saliency"]["energy"] == pytest.approx(energy_in_mask(raw, masks)[0].mean().item())
    assert "no clip, no min-max" in report["metric_inputs"]["pointing"]
    assert "What each metric reads" in markdown(report)
    data = EvalSet(images, masks, labels, text.class_embeddings(["red circle", "blue square"]), text.logit_scale)
    out = measure(tiny_encoder, data, ["saliency"], tolerance=4, robust_eps=[1], robust_steps=1, deletion_steps=4,
                  progress=False)
    assert torch.allclose(out["per_image"]["saliency"]["gini"], gini(raw), atol=1e-5)
    assert out["maps"]["saliency"].amax() == pytest.approx(1.0)  # the figures get the display maps
    assert 0 < out["clean_probability"] <= 1 and out["deletion_random_auc"] > 0
    from aft_hf.demo.report import aggregate
    from aft_hf.demo.report import markdown as demo_markdown

    agg = aggregate(out, {"aft": [out]}, ["saliency"])
    assert agg["deletion_random_auc"]["original"] == out["deletion_random_auc"]
    report = {"variants": ["aft"], "seeds": [0], "verdicts": [], **agg,
              "wall_time_s": 1.0, "settings": {"eval_images": 4, "attack": "linf eps 4/255", "steps": 1}}
    assert "random ranking: original" in demo_markdown(report)


# --------------------------------------------------------------------------- pointing ties, empty masks (A2, A7)


def test_pointing_game_scores_the_share_of_tied_maxima():
    masks = boxes_to_masks([[10, 10, 20, 20]] * 2, 20, 20)
    maps = torch.zeros(2, 1, 20, 20)
    maps[0, 0, 0, :2] = 1  # two tied maxima in the top-left corner, outside: first in raster order
    maps[0, 0, 12, 12:14] = 1  # and two inside
    maps[1, 0, 0, 0] = 1  # one outside, three inside
    maps[1, 0, 15, 15:18] = 1
    assert pointing_game(maps, masks).tolist() == [0.5, 0.75]  # an argmax would say 0 (raster order)
    assert pointing_game(maps.flip(-1).flip(-2), masks.flip(-1).flip(-2)).tolist() == [0.5, 0.75]  # no order bias
    single = torch.zeros(1, 1, 20, 20)
    single[0, 0, 12, 12] = 2.0
    single[0, 0, 0, 0] = 1.9  # a clip at this level would tie the two
    assert pointing_game(single, masks[:1]).item() == 1.0


def test_empty_masks_are_skipped_by_every_localisation_metric_and_counted(tiny_encoder, tiny_clip_path):
    from aft_hf.evaluate import empty_masks
    from aft_hf.explain import load_text_tower

    masks = boxes_to_masks([[0, 0, 10, 20], [30, 30, 40, 40]], 20, 20)  # the second box lies outside the image
    maps = torch.ones(2, 1, 20, 20)
    share, chance = energy_in_mask(maps, masks)
    assert share[0].item() == pytest.approx(0.5) and math.isnan(share[1]) and math.isnan(chance[1])
    assert math.isnan(pointing_game(maps, masks)[1]) and empty_masks(masks).tolist() == [False, True]
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    masks = boxes_to_masks([[0, 0, 16, 16], [0, 0, 16, 16], [40, 40, 50, 50], [0, 0, 0, 0]], 32, 32)
    report, ctx = evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images,
                                 labels, ["energy", "pointing"], ["saliency"], masks, progress=False, info=INFO)
    m = report["metrics"]
    assert m["n_empty_masks"] == 2
    expected = energy_in_mask(ctx.maps("saliency")[:2], masks[:2])[0].mean().item()  # only the non-empty masks
    assert m["energy_in_mask"]["saliency"]["energy"] == pytest.approx(expected)
    assert m["energy_in_mask"]["saliency"]["chance"] == pytest.approx(0.25)
    assert "empty: 2" in markdown(report)
    with pytest.raises(EvaluationError, match=r"masks \(4, 1, 16, 64\) do not match images"):
        evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images, labels,
                       ["pointing"], ["saliency"], torch.ones(4, 1, 16, 64), progress=False)


# --------------------------------------------------------------------------- deletion / insertion (A3)


def test_normalised_auc_makes_models_of_different_confidence_comparable():
    from aft_hf.evaluate import normalised_auc

    x, mask = _region_images(4)
    maps = mask.expand(4, -1, -1, -1) + 0.01 * torch.rand(4, 1, 32, 32)
    confident, timid = _region_score(mask), lambda im, y: 0.3 * _region_score(mask)(im, y)
    fr, a = perturbation_curve(confident, x, maps, mode="deletion", steps=8, progress=False)
    _, b = perturbation_curve(timid, x, maps, mode="deletion", steps=8, progress=False)
    assert auc(fr, b).mean() < auc(fr, a).mean() - 0.05  # unnormalised, the less confident model looks "better"
    na = normalised_auc(fr, a, a[:, 0])
    assert torch.allclose(na, normalised_auc(fr, b, b[:, 0]))  # normalised by its clean probability: equal
    assert normalised_auc([0, 1], torch.tensor([[0.5, 0.5], [0.1, 0.1]]), torch.tensor([0.5, 0.1])).tolist() == \
        pytest.approx([5 / 3, 1 / 3])  # one normaliser per model: the mean clean probability 0.3


def test_rise_baselines_by_default():
    from aft_hf.evaluate.faithfulness import uninformative

    x = torch.rand(2, 3, 16, 16)
    seen = []

    def score(images, labels):
        seen.append(images.clone())
        return images.mean(dim=(1, 2, 3))

    maps = torch.rand(2, 1, 16, 16)
    perturbation_curve(score, x, maps, mode="deletion", steps=2, progress=False)
    assert torch.equal(seen[-1], torch.zeros_like(x))  # deletion ends on black
    seen.clear()
    perturbation_curve(score, x, maps, mode="insertion", steps=2, progress=False)
    assert torch.allclose(seen[0], uninformative(x, "blur"))  # insertion starts from the blurred image


def test_deletion_metric_reports_normalised_auc_against_random(tiny_encoder, tiny_clip_path):
    from aft_hf.explain import load_text_tower

    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    report, ctx = evaluate_model(tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images,
                                 labels, ["deletion", "insertion"], ["saliency"], None,
                                 {"deletion": {"steps": 4}, "insertion": {"steps": 4}}, progress=False, info=INFO)
    for mode, baseline in (("deletion", "zero"), ("insertion", "blur")):
        d = report["metrics"][mode]
        s, r = d["methods"]["saliency"], d["methods"]["random"]
        clean = ctx.label_probability(images, labels).mean().item()
        assert d["baseline"] == baseline and d["clean_probability"] == pytest.approx(clean, rel=1e-5)
        assert s["auc"] == pytest.approx(s["auc_unnormalised"] / clean, rel=1e-4)
        assert s["random_auc"] == r["auc"] and s["auc_minus_random"] == pytest.approx(s["auc"] - r["auc"])
    assert d["methods"]["saliency"]["curve"][-1] == pytest.approx(1.0, rel=1e-4)  # insertion ends on the clean image
    assert "deletion AUC minus random" in markdown(report)


# --------------------------------------------------------------------------- ROAR evaluator (A4)


@pytest.mark.slow
def test_small_cnn_evaluator_is_seeded_and_roar_falls_with_the_true_ranking():
    from aft_hf.evaluate import SmallCNN

    xtr, ytr = _roar_data(160, 0)
    xte, yte = _roar_data(80, 1)
    a, b = SmallCNN({"epochs": 3}, seed=5), SmallCNN({"epochs": 3}, seed=5)
    state = torch.random.get_rng_state()
    a.fit(xtr, ytr)
    b.fit(xtr, ytr)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))  # seeded: identical
    truth = torch.zeros(1, 1, 8, 8)
    truth[..., :2, :2] = 1
    res = roar(xtr, ytr, xte, yte, {"truth": truth.expand(160, -1, -1, -1) + 0.01 * torch.rand(160, 1, 8, 8)},
               {"truth": truth.expand(80, -1, -1, -1) + 0.01 * torch.rand(80, 1, 8, 8)}, fractions=(0.1,),
               evaluator_factory=lambda seed: SmallCNN({"epochs": 10}, seed=seed), progress=False)
    acc = res["accuracy"]
    assert acc["truth"][0] >= 0.85  # the CNN learns the corner from scratch
    assert acc["truth"][1] <= 0.7 and acc["random"][1] >= 0.8


def test_roar_metric_defaults_to_the_cnn_and_names_the_evaluator(tiny_encoder, tiny_clip_path):
    from aft_hf.evaluate.metrics import ROAR
    from aft_hf.explain import load_text_tower

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    text = load_text_tower(str(tiny_clip_path))
    for options, kind, words in (({}, "cnn", "from scratch"), ({"evaluator": "probe"}, "probe", "linear probe")):
        report, _ = evaluate_model(tiny_encoder, text, ["a", "b"], ["{}"], images, labels, ["roar"], ["saliency"],
                                   None, {"roar": {"fractions": [0.5], **options}}, progress=False, info=INFO)
        r = report["metrics"]["roar"]
        assert r["evaluator_kind"] == kind and words in r["evaluator"] and words in markdown(report)
    with pytest.raises(EvaluationError, match="unknown ROAR evaluator 'svm'"):
        ROAR(evaluator="svm").compute(_ctx(tiny_encoder))


def test_robust_attack_lists_its_budgets_in_the_order_of_robust_top1(tiny_encoder, tiny_clip_path):
    from aft_hf.explain import load_text_tower

    images, labels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 2)
    report, _ = evaluate_model(
        tiny_encoder, load_text_tower(str(tiny_clip_path)), ["a", "b"], ["{}"], images, labels, ["robust"], [], None,
        {"robust": {"eps": [4, 1], "steps": 1, "attack": "pgd"}}, progress=False,
        info={"model": "tiny", "text_model": "tiny", "dataset": "rand", "split": "test", "skipped_images": 0,
              "class_names_source": "list"})
    m = report["metrics"]
    assert list(m["robust_top1"]) == m["robust_attack"]["eps"] == ["1/255", "4/255"]
    note = " ".join(n for r in report["results"].values() for n in r["notes"])
    assert "Attack: PGD-1, L-inf; an image" in note and "iterations" not in note  # PGD-1 says it once
