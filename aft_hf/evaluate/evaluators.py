"""ROAR's default evaluator: a small CNN trained from scratch on the (modified) images.

ROAR asks whether the removed pixels carried the information a model *can learn* to use, so the
evaluator is retrained from scratch for every (method, fraction) with the same architecture, data,
schedule and seed, and it is independent of the model whose maps are evaluated. (A linear probe on
the evaluated model's own embeddings, :class:`aft_hf.evaluate.LinearProbe`, is cheaper but reads the
modified images through that very model.) Written directly in torch: a handful of layers, and no
library here ships a seeded from-scratch image classifier of this size.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def small_cnn(num_classes: int, width: int = 16) -> nn.Module:
    """Two strided 3x3 convolutions (~5k weights at width 16), a 4x4 average pool and a linear layer."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, num_classes))


class SmallCNN:
    """Seeded from-scratch CNN evaluator (``fit`` then ``accuracy``), the default of ROAR.

    Args:
        epochs: passes over the train images (Adam, ``lr``, mini-batches of ``batch_size``).
        seed: fixes the initial weights and the batch order, so every (model, method, fraction)
            trains under identical conditions; the global torch RNG is left untouched.
        device: where to train (``None`` = CPU).
    """

    def __init__(self, epochs: int = 8, lr: float = 3e-3, batch_size: int = 32, width: int = 16, seed: int = 0,
                 device: Optional[torch.device] = None):
        self.epochs, self.lr, self.batch_size, self.width, self.seed = epochs, lr, batch_size, width, seed
        self.device = torch.device(device or "cpu")
        self.net: Optional[nn.Module] = None

    def _normalise(self, images: Tensor) -> Tensor:
        return ((images.float() - self.mu) / self.sigma).to(self.device)

    def fit(self, images: Tensor, labels: Tensor) -> None:
        self.mu = images.float().mean(dim=(0, 2, 3), keepdim=True)
        self.sigma = images.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        x, y = self._normalise(images), labels.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = small_cnn(int(labels.max()) + 1, self.width).to(self.device)
            order = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            self.net.train()
            with torch.enable_grad():
                for _ in range(self.epochs):
                    perm = torch.randperm(len(x), generator=order).to(self.device)
                    for s in range(0, len(x), self.batch_size):
                        idx = perm[s:s + self.batch_size]
                        opt.zero_grad()
                        F.cross_entropy(self.net(x[idx]), y[idx]).backward()
                        opt.step()
        self.net.eval()

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        if self.net is None:
            raise RuntimeError("fit the evaluator first")
        x = self._normalise(images)
        pred = torch.cat([self.net(x[s:s + 256]).argmax(1).cpu() for s in range(0, len(x), 256)])
        return (pred == labels.cpu()).float().mean().item()
