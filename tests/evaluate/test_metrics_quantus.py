"""Cross-check of our metrics against Quantus (Hedström et al. 2023) on the same maps.

Quantus is imported once, here only (its import takes seconds). Where the definitions differ we
say how and compare on inputs where they must agree.
"""

import warnings

import numpy as np
import pytest
import torch

from aft_hf.evaluate import boxes_to_masks, energy_in_mask, gini, perturbation_curve, pointing_game

quantus = pytest.importorskip("quantus")
pytestmark = pytest.mark.usefixtures("single_thread")


def _maps_and_masks(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, size, size, generator=g) - 0.2  # some negative values: energy keeps the positive part
    masks = boxes_to_masks([[2 * i, i, 2 * i + 6, i + 7] for i in range(n)], size, size)
    maps.view(n, -1)[: n // 2, 4 * size + 5] = 2.0  # half the maps peak inside their box (no ties here)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, maps, masks


def _np(t):
    return t.detach().cpu().numpy()


def _quantus(metric, x, maps, masks=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=_np(x), y_batch=np.zeros(len(x), dtype=int), a_batch=_np(maps),
                                 s_batch=None if masks is None else _np(masks), channel_first=True, **kw), dtype=float)


def test_pointing_game_energy_and_gini_agree_with_quantus():
    x, maps, masks = _maps_and_masks()
    ours = pointing_game(maps, masks).numpy()
    theirs = _quantus(quantus.PointingGame(normalise=False, abs=False, disable_warnings=True), x, maps, masks)
    assert ours.tolist() == theirs.tolist() and 0 < ours.mean() < 1
    tied = torch.zeros(1, 1, 16, 16)
    tied[0, 0, 0, 0] = tied[0, 0, 8, 8] = 1  # one maximum outside, one inside the box
    box = boxes_to_masks([[6, 6, 12, 12]], 16, 16)
    theirs = _quantus(quantus.PointingGame(normalise=False, abs=False, disable_warnings=True), x[:1], tied, box)
    assert theirs[0] == 1 and pointing_game(tied, box).item() == 0.5  # Quantus: any tie hits; ours: the share
    share, _ = energy_in_mask(maps, masks)
    theirs = _quantus(quantus.AttributionLocalisation(normalise=False, abs=False, positive_attributions=True,
                                                      disable_warnings=True), x, maps, masks)
    assert np.allclose(share.numpy(), theirs, atol=1e-6)
    a = maps.abs()  # Gini reads |map|; Quantus adds 1e-7 to every value before sorting
    theirs = _quantus(quantus.Sparseness(normalise=False, abs=True, disable_warnings=True), x, a)
    assert np.allclose(gini(a).numpy(), theirs, atol=1e-4)


def test_deletion_curve_agrees_with_quantus_region_perturbation():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 6, 6)
    x[:, :, 0, 0] = 0  # Quantus's "black" is the image minimum: make it 0, our deletion baseline
    y = torch.tensor([0, 1, 0])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 2)).eval()
    maps = torch.rand(3, 1, 6, 6)
    metric = quantus.RegionPerturbation(patch_size=1, order="morf", regions_evaluation=36, normalise=False,
                                        abs=False, perturb_baseline="black", disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(metric(model=model, x_batch=_np(x), y_batch=_np(y), a_batch=_np(maps), device="cpu",
                                   softmax=True, channel_first=True))

    def prob(images, labels):
        return torch.softmax(model(images), 1).gather(1, labels.view(-1, 1)).squeeze(1)

    _, scores = perturbation_curve(prob, x, maps, y, "deletion", steps=36, progress=False)  # default: zero fill
    ours = _np(scores[:, :1] - scores[:, 1:])  # Quantus records the drop from the clean score after each pixel
    assert theirs.shape == (3, 36) and np.allclose(ours, theirs, atol=1e-6)
