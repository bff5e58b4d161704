"""ROAR's default evaluator: a small CNN trained from scratch on the (modified) images.

ROAR asks whether the removed pixels carried the information a model *can learn* to use, so the
evaluator is retrained from scratch for every (method, fraction) with the same architecture, data,
schedule and seed, and it is independent of the model whose maps are evaluated. (A linear probe on
the evaluated model's own embeddings, :class:`aft_hf.evaluate.LinearProbe`, is cheaper but reads the
modified images through that very model.)

The architecture and schedule are the usual small-image recipe, sized for a CPU: a patchify stem
(a ``stem`` x ``stem`` convolution of stride ``stem``, as in ConvNeXt/ViT stems), then 3x3
conv-BatchNorm-ReLU stages with 2x2 max-pooling between them, global average pooling and a linear
layer; AdamW with a one-cycle learning rate. Every setting is a typed field of :class:`CNNOptions`.
An evaluator that cannot read the intact images makes every ROAR curve start low and compresses its
drops into noise: ROAR reports the evaluator's accuracy on intact held-out images and flags it
below a floor (:func:`aft_hf.evaluate.faithfulness.roar`). In the synthetic world, 3000 training
images and 4 epochs reach about 0.95 on intact held-out images, while 128 images and 30 epochs
reached 0.36 (docs/roar.md): data, not epochs, is what a weak evaluator lacks.

Written directly in torch: a handful of layers, and no installed library ships a seeded
from-scratch image classifier of this size (torchvision is not a dependency).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import EvaluationError


@dataclass(frozen=True)
class CNNOptions:
    """Architecture and schedule of :class:`SmallCNN` (every field validated on construction)."""

    widths: tuple[int, ...] = (32, 64, 64, 64)
    """Channels of the stem and of each 3x3 stage (2 or more entries); a 2x2 max-pool follows every
    stage but the last while the feature map is at least 4 pixels wide."""
    stem: int = 4
    """Patch size and stride of the stem (1 = a 3x3 convolution at full resolution); images narrower
    than 4 * stem use 1, so tiny images keep their pixels."""
    epochs: int = 8
    """Passes over the training images."""
    lr: float = 3e-3
    """Peak learning rate of the one-cycle schedule (AdamW)."""
    weight_decay: float = 5e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise EvaluationError(f"CNN widths must be 2 or more positive channel counts, got {list(self.widths)}")
        for name in ("stem", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise EvaluationError(f"CNN {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise EvaluationError(f"CNN lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")

    @classmethod
    def coerce(cls, value: Any) -> "CNNOptions":
        """``None`` -> defaults; a dict -> its fields (an unknown name is refused, naming the valid ones)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise EvaluationError(f"unknown CNN option(s) {unknown} (valid: {', '.join(cls.__dataclass_fields__)})")
            return cls(**value)
        raise EvaluationError(f"CNN options must be a CNNOptions or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def conv_net(num_classes: int, image_size: int, options: CNNOptions = CNNOptions()) -> nn.Module:
    """The evaluator network for ``image_size`` x ``image_size`` inputs (see :class:`CNNOptions`)."""
    stem = options.stem if image_size >= 4 * options.stem else 1
    w = options.widths
    layers: list[nn.Module] = [nn.Conv2d(3, w[0], stem, stride=stem, bias=False) if stem > 1
                               else nn.Conv2d(3, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
    size = image_size // stem
    for i, (cin, cout) in enumerate(zip(w[:-1], w[1:])):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        if i < len(w) - 2 and size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[-1], num_classes))


class SmallCNN:
    """Seeded from-scratch CNN evaluator (``fit`` then ``accuracy``), the default of ROAR.

    Args:
        options: architecture and schedule (:class:`CNNOptions`, or a dict of its fields).
        seed: fixes the initial weights and the batch order, so every (model, method, fraction)
            trains under identical conditions; the global torch RNG is left untouched.
        device: where to train (``None`` = CPU).
    """

    def __init__(self, options: Optional[CNNOptions] = None, seed: int = 0, device: Optional[torch.device] = None):
        self.options, self.seed = CNNOptions.coerce(options), seed
        self.device = torch.device(device or "cpu")
        self.net: Optional[nn.Module] = None

    def _normalise(self, images: Tensor) -> Tensor:
        return ((images.float() - self.mu) / self.sigma).to(self.device)

    def fit(self, images: Tensor, labels: Tensor) -> None:
        o = self.options
        self.mu = images.float().mean(dim=(0, 2, 3), keepdim=True)
        self.sigma = images.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        x, y = self._normalise(images), labels.to(self.device)
        batches = -(-len(x) // o.batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = conv_net(int(labels.max()) + 1, images.shape[-1], o).to(self.device)
            order = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
            schedule = torch.optim.lr_scheduler.OneCycleLR(opt, o.lr, total_steps=o.epochs * batches)
            self.net.train()
            with torch.enable_grad():
                for _ in range(o.epochs):
                    perm = torch.randperm(len(x), generator=order).to(self.device)
                    for s in range(0, len(x), o.batch_size):
                        idx = perm[s:s + o.batch_size]
                        if len(idx) < 2:  # BatchNorm needs two images; a lone remainder is dropped
                            continue
                        opt.zero_grad()
                        F.cross_entropy(self.net(x[idx]), y[idx]).backward()
                        opt.step()
                        schedule.step()
        self.net.eval()

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        if self.net is None:
            raise RuntimeError("fit the evaluator first")
        x = self._normalise(images)
        pred = torch.cat([self.net(x[s:s + 256]).argmax(1).cpu() for s in range(0, len(x), 256)])
        return (pred == labels.cpu()).float().mean().item()
