"""nanmean: NaN marks an undefined per-image value and is left out; nothing defined gives NaN."""

import math

import torch

from aft_hf.evaluate.stats import nanmean


def test_nanmean_skips_nan_and_is_nan_when_nothing_is_defined():
    assert nanmean(torch.tensor([1.0, float("nan"), 3.0])) == 2.0
    assert nanmean(torch.tensor([0.5])) == 0.5
    assert math.isnan(nanmean(torch.tensor([float("nan"), float("nan")])))
    assert math.isnan(nanmean(torch.tensor([])))
