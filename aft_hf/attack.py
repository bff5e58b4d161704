"""PGD with momentum under any registered threat model (:mod:`aft_hf.threat_models`).

The attacker is independent of CLIP: it perturbs images in [0, 1] for any differentiable
``forward`` and any per-sample ``loss_fn``, maximising (training, robustness evaluation) or
minimising. Formulas follow ``docs/method.md`` (#threat-models, #the-inner-attack):

    delta <- U(-eps, eps) projected; v <- 0
    repeat K times:
        J = sign * loss(forward(clamp(x + n, 0, 1) + delta)) - R(delta)
        g = normalise(grad_delta J); v = normalise(momentum * v + g)
        delta = project(delta + alpha * v); delta = clamp(x + delta, 0, 1) - x

During the attack a module ``forward`` is in eval mode and runs on detached parameters
(:func:`attack_mode`), so only d/d delta is computed and no parameter graph is kept alive.
R, normalise and project are the threat model's; this module knows no norm by name.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .config import AttackConfig
from .objectives import embedding_distance  # noqa: F401  (the AFT loss, re-exported)
from .threat_models import (
    DEFAULT_NORM,
    AttackError,
    ThreatModel,
    check_number,
    get_threat_model,
    patch_blocks,
    still_start_problem,
)

logger = logging.getLogger(__name__)


def check_pixels(images: Tensor, name: str = "images", check_range: bool = True) -> None:
    """Refuse anything but a float tensor (B, C, H, W) with values in [0, 1] (with a 1e-3 tolerance).

    The attack clamps to [0, 1], so 8-bit values (0..255) would be destroyed silently, and CLIP-normalised
    pixels would make the budget meaningless: both are errors that say what to pass instead. On a GPU the value
    range needs a device-to-host sync, so attackers check it there on their first call only (``check_range``);
    on CPU, where it costs one reduction, at every call (:func:`_range_due`).
    """
    if not torch.is_tensor(images):
        raise AttackError(f"{name} must be a torch.Tensor (B, C, H, W) in [0, 1], got {type(images).__name__}")
    if not images.is_floating_point():
        raise AttackError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype} "
                          "(convert 8-bit data with images.float() / 255)")
    if images.dim() != 4:
        raise AttackError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if check_range and images.numel():
        lo, hi = torch.aminmax(images.detach())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise AttackError(f"{name} must be pixels in [0, 1] (un-normalised; the model wrapper normalises), "
                              f"got values in [{lo.item():.3g}, {hi.item():.3g}]")


def _range_due(attacker, images: Tensor) -> bool:
    """Whether ``attacker`` checks the pixel range of ``images``: always on CPU, else on its first call only."""
    return not attacker._range_checked or (torch.is_tensor(images) and images.device.type == "cpu")


def _check_settings(norm: str, eps: float, eps2: float, steps: int, alpha: float, momentum: float,
                    noise_std: float, random_start: bool, maximize: bool) -> None:
    """The constructor's checks beyond the threat model's own: each names the bad argument and what is allowed."""
    cls = get_threat_model(norm)
    for name, value in (("eps", eps), ("eps2", eps2), ("alpha", alpha), ("noise_std", noise_std)):
        check_number(name, value)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise AttackError(f"steps must be an integer >= 0, got {steps!r}")
    if not 0 <= momentum < 1:
        raise AttackError(f"momentum must be in [0, 1), got {momentum}")
    problems = [message for _, message in cls.budget_problems(eps, eps2, steps)]
    # a per-pixel step of 1 or more only makes sense for budgets of half the range or more (robust accuracy at 128/255+)
    per_pixel = [("noise_std", noise_std)] + ([("alpha", alpha)] if cls.eps_per_pixel and eps < 0.5 else [])
    problems += [f"{name} is in pixel units ([0, 1] scale), got {value:g}: a step across the whole pixel range; did you "
                 f"mean {value:g}/255 = {value / 255:.4g}?" for name, value in per_pixel if value >= 1]
    problems.append(still_start_problem(random_start, noise_std, steps, maximize))
    if any(problems):
        raise AttackError(next(p for p in problems if p))


@contextlib.contextmanager
def attack_mode(module: Optional[nn.Module]) -> Iterator[Callable[[Tensor], Tensor]]:
    """Eval mode, and a forward through *detached* parameters, for the duration of an attack.

    Yields the function to call instead of ``module``. It builds no graph for the parameters, so
    only d/d input is computed and no parameter activations are kept. ``requires_grad`` is
    deliberately left alone: toggling it re-creates the parameters' gradient accumulators and
    silently drops the hooks DDP registered on them (no more gradient all-reduce).
    """
    was_training = module.training
    module.eval()
    detached = {name: p.detach() for name, p in module.named_parameters()}
    try:
        yield lambda x: functional_call(module, detached, (x,))
    finally:
        module.train(was_training)


class PGDAttacker(nn.Module):
    """Projected gradient descent with momentum, uniform start and per-iteration Gaussian noise.

    The geometry (budget rules, start, step direction, projection, penalty R) is the registered
    threat model ``norm`` (:mod:`aft_hf.threat_models`), available as :attr:`threat`.

    Args:
        norm: a registered threat model: ``linf``, ``l2``, ``huber``, ``elastic``, ``group`` or your own.
        eps: budget in pixel units ([0, 1] scale), e.g. ``4 / 255``.
        eps2: second budget (pixel units) of the norms that have one (``huber``, ``elastic``).
        steps: number of attack iterations K (0 returns the clean images).
        alpha: step size in pixel units.
        momentum: weight of the previous direction (0.9 in the official code).
        noise_std: std of the noise n resampled at every iteration (pixel units).
        random_start: start from the threat model's random sample instead of 0. An attack (``maximize``)
            with neither a random start nor noise is refused: it would start and stay at the clean image.
        patch_size: patch grid of the norms that follow it (``group``: the model's own patch size).
        maximize: ascend the loss (an attack); ``False`` descends it.
        freeze_params: put a module ``forward`` in eval mode with parameters frozen during the
            attack (``False`` keeps its mode and parameter graph: the naive reference behaviour).
    """

    def __init__(
        self,
        norm: str = DEFAULT_NORM,
        eps: float = 4 / 255,
        eps2: float = 0.0,
        steps: int = 10,
        alpha: float = 1 / 255,
        momentum: float = 0.9,
        noise_std: float = 1 / 255,
        random_start: bool = True,
        patch_size: Optional[int] = None,
        maximize: bool = True,
        freeze_params: bool = True,
    ):
        super().__init__()
        _check_settings(norm, eps, eps2, steps, alpha, momentum, noise_std, random_start, maximize)
        self.threat: ThreatModel = get_threat_model(norm)(eps, eps2, patch_size)
        """The bound threat model: direction, projection, penalty and start of this attack."""
        self.norm, self.eps, self.eps2, self.steps, self.alpha = norm, eps, eps2, steps, alpha
        self.momentum, self.noise_std, self.random_start = momentum, noise_std, random_start
        self.patch_size, self.maximize, self.freeze_params = patch_size, maximize, freeze_params
        self.last_losses: list[Tensor] = []
        """Mean loss (without R) at each iteration of the latest call, as detached tensors."""
        self._range_checked = False

    @classmethod
    def from_config(cls, cfg: AttackConfig, patch_size: Optional[int] = None, freeze_params: bool = True) -> "PGDAttacker":
        """Build from an :class:`AttackConfig` (budgets there are in 1/255 units); warns when the steps cannot
        cross the budget (:meth:`~aft_hf.threat_models.ThreatModel.reach_warning`)."""
        if warning := get_threat_model(cfg.norm).reach_warning(cfg.eps, cfg.steps, cfg.alpha):
            logger.warning(warning)
        return cls(
            norm=cfg.norm, eps=cfg.eps / 255, eps2=cfg.eps2 / 255, steps=cfg.steps, alpha=cfg.alpha / 255,
            momentum=cfg.momentum, noise_std=cfg.noise_std / 255, random_start=cfg.random_start,
            patch_size=patch_size, freeze_params=freeze_params,
        )

    def extra_repr(self) -> str:
        eps2 = f", eps2={self.eps2 * 255:g}/255" if self.threat.uses_eps2 else ""
        return (f"norm={self.norm}, eps={self.eps * 255:g}/255{eps2}, steps={self.steps}, "
                f"alpha={self.alpha * 255:g}/255, momentum={self.momentum}, noise_std={self.noise_std * 255:g}/255")

    # ------------------------------------------------------------------ the threat model's geometry

    def penalty(self, delta: Tensor) -> Tensor:
        """R(delta): the soft part of the threat model (zero for the hard-constrained norms)."""
        return self.threat.penalty(delta)

    def group_norms(self, delta: Tensor) -> Tensor:
        """L2 norm of each (sample, channel, patch) block of the ``patch_size`` grid: shape (B, C, nh, nw)."""
        return patch_blocks(delta, self.patch_size).norm(dim=-1)

    def normalise(self, g: Tensor) -> Tensor:
        """Steepest-ascent direction of unit size in the attack's geometry."""
        return self.threat.direction(g)

    def project(self, delta: Tensor) -> Tensor:
        """Map delta back into the hard constraint set (none for some norms, e.g. elastic)."""
        return self.threat.project(delta)

    def init_delta(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The starting delta: the threat model's random start inside [0, 1] (zeros without random start)."""
        if not self.random_start:
            return torch.zeros_like(images)
        return self.threat.init_delta(images, generator)

    # ------------------------------------------------------------------ the attack

    def forward(
        self,
        forward: Callable[[Tensor], Tensor],
        images: Tensor,
        loss_fn: Callable[[Tensor], Tensor],
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Return adversarial images clamp(images + delta, 0, 1), detached.

        Args:
            forward: maps images in [0, 1] to outputs (a module is put in attack mode).
            images: (B, C, H, W) float in [0, 1] (anything else raises :class:`AttackError`).
            loss_fn: maps outputs to a per-sample loss (B,) or a scalar.
            generator: optional RNG for the start and the noise.
        """
        check_pixels(images, check_range=_range_due(self, images))
        self._range_checked = True
        images = images.detach()
        self.last_losses = []
        if self.steps == 0:
            return images.clone()
        sign = 1.0 if self.maximize else -1.0
        delta = self.init_delta(images, generator)
        velocity = torch.zeros_like(images)
        frozen = isinstance(forward, nn.Module) and self.freeze_params
        with (attack_mode(forward) if frozen else contextlib.nullcontext(forward)) as forward, torch.enable_grad():
            for _ in range(self.steps):
                delta.requires_grad_(True)
                noisy = images
                if self.noise_std > 0:
                    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
                    noisy = (images + self.noise_std * noise).clamp(0, 1)
                loss = loss_fn(forward(noisy + delta)).mean()
                objective = sign * loss - self.penalty(delta)
                (grad,) = torch.autograd.grad(objective, delta)
                self.last_losses.append(loss.detach())
                with torch.no_grad():
                    velocity = self.normalise(self.momentum * velocity + self.normalise(grad))
                    delta = self.project(delta + self.alpha * velocity)
                    delta = (images + delta).clamp(0, 1) - images
        return (images + delta.detach()).clamp(0, 1)


class UniformNoise(nn.Module):
    """Control for the attack: a random sample of the same threat model and budget, no gradient
    (`attack.mode: noise`). Built from a :class:`PGDAttacker` (its :attr:`~PGDAttacker.threat`) or a
    threat model; the settings of the attack proper (steps, noise, start) play no part."""

    def __init__(self, threat: Union[PGDAttacker, ThreatModel]):
        super().__init__()
        self.threat: ThreatModel = threat.threat if isinstance(threat, PGDAttacker) else threat
        self.last_losses: list[Tensor] = []
        self._range_checked = False

    @classmethod
    def from_config(cls, cfg: AttackConfig, patch_size: Optional[int] = None) -> "UniformNoise":
        """Build from an :class:`AttackConfig` (budgets there are in 1/255 units)."""
        return cls(get_threat_model(cfg.norm)(cfg.eps / 255, cfg.eps2 / 255, patch_size))

    def extra_repr(self) -> str:  # the start-up line names the budget, as PGDAttacker's does
        eps2 = f", eps2={self.threat.eps2 * 255:g}/255" if self.threat.uses_eps2 else ""
        return f"norm={self.threat.name}, eps={self.threat.eps * 255:g}/255{eps2}"

    def forward(self, forward: Optional[Callable[[Tensor], Tensor]], images: Tensor,
                loss_fn: Optional[Callable[[Tensor], Tensor]] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """clamp(images + u, 0, 1) with u the threat model's random sample; ``forward`` and ``loss_fn`` are
        unused (same call signature as :class:`PGDAttacker`)."""
        check_pixels(images, check_range=_range_due(self, images))
        self._range_checked = True
        images = images.detach()
        return (images + self.threat.sample(images, generator)).clamp(0, 1)
