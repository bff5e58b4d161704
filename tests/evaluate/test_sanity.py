"""The randomisation check's Spearman correlation: average ranks for ties, undefined for a constant map."""

import math

import pytest
import torch

from aft_hf.evaluate.sanity import average_ranks, randomisation_check, spearman
from aft_hf.results import legacy_results


def test_tied_values_share_their_average_rank():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 5.0, 0.0]])
    assert average_ranks(x).tolist() == [[4.5, 1.5, 4.5, 3.0, 1.5], [2.5, 2.5, 2.5, 5.0, 2.5]]


def test_spearman_of_tied_maps_by_hand():
    # ranks a: [1.5, 1.5, 3, 4]; b: [1, 2.5, 2.5, 4]; centred: [-1, -1, .5, 1.5] and [-1.5, 0, 0, 1.5]
    # rho = 3.75 / sqrt(4.5 * 4.5) = 5/6 (positional ranks would give 1.0)
    a = torch.tensor([0.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    b = torch.tensor([0.0, 1.0, 1.0, 3.0]).view(1, 1, 2, 2)
    assert spearman(a, b).item() == pytest.approx(5 / 6, abs=1e-6)


def test_spearman_agrees_with_scipy_on_relu_maps():
    stats = pytest.importorskip("scipy.stats")  # the hand-computed case above needs no scipy
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(4, 1, 8, 8, generator=g))  # about half the pixels exactly 0, as Grad-CAM's
    b = torch.relu(torch.randn(4, 1, 8, 8, generator=g) + a).round(decimals=1)
    want = [stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(4)]
    assert spearman(a, b).tolist() == pytest.approx(want, abs=1e-5)


def test_a_constant_map_is_undefined_and_left_out_of_the_mean(tiny_encoder, batch):
    assert all(math.isnan(v) for v in spearman(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)).tolist())
    maps = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    maps[1] = 0.5  # one constant map: the mean is over the other three
    res = randomisation_check(tiny_encoder, lambda enc: maps)
    assert res["undefined"] == 1 and math.isnan(res["spearman"][1])
    assert res["spearman_mean"] == pytest.approx(1.0)
    shown = legacy_results({"randomisation_spearman": {"gradcam": 0.5}, "randomisation_undefined": {"gradcam": 2}})
    assert any("left out of the mean: gradcam 2" in n for n in shown["randomisation"].notes)
