"""Complexity of attribution maps: sparseness as the Gini index.

Chalasani et al. 2020, "Concise Explanations of Neural Networks using Adversarial Training"
(the Gini index of |attribution| as sparseness; the quantity AFT's L1-type penalty should raise).
"""

from __future__ import annotations

from torch import Tensor


def gini(maps: Tensor) -> Tensor:
    """Gini index per map (B,): 0 for a constant map, (n-1)/n ~ 1 for a one-hot map; |.| is taken first."""
    x = maps.detach().float().abs().flatten(1).sort(dim=1).values
    n = x.shape[1]
    total = x.sum(dim=1)
    idx = (2 * (1 + x.new_tensor(range(n))) - n - 1)
    g = (x * idx).sum(dim=1) / (n * total.clamp_min(1e-12))
    return g.where(total > 0, g.new_zeros(()))
