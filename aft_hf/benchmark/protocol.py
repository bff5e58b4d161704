"""The protocol's settings, what a run changes from them, its cost, and its attack on one batch.

The reference (RobustVLM's clip_benchmark fork, ``attack=aa``) runs AutoAttack ``version='custom'`` with
``attacks_to_run=('apgd-ce', 'apgd-t')`` (only ``apgd-ce`` for a 2-class dataset such as pcam), L-inf,
``iterations_apgd=100``; in that version APGD-CE keeps its constructor's 5 restarts and APGD-T its 1
restart for each of 9 target classes; eps 2/255 and 4/255, each budget its own run on the clean-correct
images; the first 1000 test images (ImageNet 5000), batch 50; clean accuracy on the whole test split.
The attack here is the package's APGD (:func:`aft_hf.evaluate.apgd.apgd`), run in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from ..attack import attack_mode
from ..evaluate.apgd import AUTOCAST_DTYPES, apgd_robust, autocast_context
from ..threat_models import Linf, robust_budget_problems
from .errors import BenchmarkError

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Protocol:
    """Everything that decides a benchmark number (recorded in report.json as it is)."""

    eps: tuple[float, ...] = (2.0, 4.0)
    """L-inf budgets in 1/255 units."""
    iterations: int = 100
    ce_restarts: int = 5
    t_restarts: int = 1
    targets: int = 9
    """APGD-T target classes (the highest-ranked wrong classes on the clean image); none with 2 classes."""
    robust_images: Optional[int] = None
    """Images attacked per dataset; None: the protocol's (1000, ImageNet 5000)."""
    clean_images: Optional[int] = None
    """Images for clean accuracy; None: the whole test split."""
    nested: bool = False
    """Attack at each budget only the images that survived the smaller one (cheaper; never higher numbers)."""
    precision: str = "fp32"
    batch_size: int = 50
    seed: int = 0
    norm: str = field(default=Linf.name)
    """The protocol attacks in L-inf."""

    def __post_init__(self):
        problems = []
        if not self.eps or any(e <= 0 for e in self.eps):
            problems.append(f"--eps needs budgets > 0 (1/255 units), got {list(self.eps)}")
        problems += [f"--eps: {problem}" for problem in robust_budget_problems(e for e in self.eps if e > 0)]
        for name in ("iterations", "ce_restarts", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("t_restarts", "targets"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("robust_images", "clean_images"):
            v = getattr(self, name)
            if v is not None and v < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if problems:
            raise BenchmarkError("; ".join(problems))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eps"] = [float(e) for e in self.eps]
        return d

    def targets_for(self, num_classes: int) -> int:
        """Target classes of APGD-T: none for a 2-class dataset (the protocol), else at most classes - 1."""
        return 0 if num_classes <= 2 else min(self.targets, num_classes - 1)

    def steps_per_image(self, num_classes: int) -> int:
        """Gradient steps for one image that survives every run at one budget (the worst case)."""
        return self.iterations * (self.ce_restarts + self.t_restarts * self.targets_for(num_classes))

    def deviations(self) -> list[str]:
        """How the attack differs from the protocol's on every dataset (empty: it is the protocol's). The
        targets are a dataset's matter (:meth:`target_deviation`): 20 asked on 10 classes are the protocol's 9."""
        ref = Protocol()
        out = [f"{name} {getattr(self, name)} (protocol {getattr(ref, name)})"
               for name in ("iterations", "ce_restarts", "t_restarts", "precision")
               if getattr(self, name) != getattr(ref, name)]
        if self.nested:
            out.append("nested budgets (protocol: each budget attacks every clean-correct image)")
        return out

    def target_deviation(self, num_classes: int) -> Optional[str]:
        """How the APGD-T targets on a dataset of ``num_classes`` differ from the protocol's; None: they do not."""
        mine, protocol = self.targets_for(num_classes), Protocol().targets_for(num_classes)
        return None if mine == protocol else f"{mine} APGD-T target classes (protocol {protocol})"


def budget_key(eps: float) -> str:
    """``2/255``: how a budget names its numbers in reports and model-index entries."""
    return f"{eps:g}/255"


class PrecisionForward(nn.Module):
    """``model`` under the run's autocast (bf16 or none); logits come back as float32."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model, self.precision = model, precision
        self.image_passes = 0
        """Images through the encoder so far (forward, with or without a backward): the ETA's unit of work."""

    def forward(self, images: Tensor) -> Tensor:
        self.image_passes += images.shape[0]
        with autocast_context(images.device, AUTOCAST_DTYPES.get(self.precision)):  # fp32: None, no autocast
            return self.model(images).float()


def attack_runs(protocol: Protocol, num_classes: int) -> list[tuple[str, int]]:
    """The runs at one budget, in order: ``("ce", 0)`` per APGD-CE restart, ``("t", k)`` per APGD-T run
    against the k-th ranked wrong class."""
    runs = [("ce", 0)] * protocol.ce_restarts
    for k in range(1, protocol.targets_for(num_classes) + 1):
        runs += [("t", k)] * protocol.t_restarts
    return runs


def robust_verdicts(model: nn.Module, images: Tensor, labels: Tensor, alive: Tensor, eps: float,
                    protocol: Protocol, seed: int, clean_logits: Optional[Tensor] = None) -> Tensor:
    """Per image, whether it is still classified correctly after every run of :func:`attack_runs` at
    ``eps`` (1/255 units): the package's :func:`~aft_hf.evaluate.apgd.apgd_robust` with the protocol's
    restarts; only the images with ``alive`` set are attacked (the others are False). The class count (no
    targeted runs with 2 classes) is that of the model's logits; ``clean_logits`` (the caller's clean pass
    over ``images``) saves computing them again."""
    clean = clean_logits
    if clean is None:
        with attack_mode(model) as forward, torch.no_grad():
            clean = forward(images)
    return apgd_robust(model, images, labels, eps / 255, protocol.norm, protocol.iterations, protocol.t_restarts,
                       protocol.targets_for(clean.shape[1]), seed, clean_logits=clean,
                       ce_restarts=protocol.ce_restarts, alive=alive)


__all__ = ["PRECISIONS", "PrecisionForward", "Protocol", "attack_runs", "budget_key", "robust_verdicts"]
