"""PGD with momentum under five threat models (linf, l2, huber, elastic, group).

The attacker is independent of CLIP: it perturbs images in [0, 1] for any differentiable
``forward`` and any per-sample ``loss_fn``, maximising (training, robustness evaluation) or
minimising. Formulas follow ``docs/method.md`` (#threat-models, #the-inner-attack):

    delta <- U(-eps, eps); v <- 0
    repeat K times:
        J = sign * loss(forward(clamp(x + n, 0, 1) + delta)) - R(delta)
        g = normalise(grad_delta J); v = normalise(momentum * v + g)
        delta = project(delta + alpha * v); delta = clamp(x + delta, 0, 1) - x

During the attack a module ``forward`` is in eval mode and runs on detached parameters
(:func:`attack_mode`), so only d/d delta is computed and no parameter graph is kept alive.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .config import NORMS, AttackConfig
from .errors import InputError

_TINY = 1e-12
BOX_NORMS = ("linf", "huber", "elastic")
"""Norms whose ``eps`` bounds each pixel coordinate, so ``eps`` > 1 (the whole [0, 1] range) is a unit mistake."""


class AttackError(InputError):
    """Bad attacker settings or inputs (unknown norm, negative budget, images not (B, C, H, W) floats in [0, 1])."""


def check_pixels(images: Tensor, name: str = "images", check_range: bool = True) -> None:
    """Refuse anything but a float tensor (B, C, H, W) with values in [0, 1] (with a 1e-3 tolerance).

    The attack clamps to [0, 1], so 8-bit values (0..255) would be destroyed silently, and CLIP-normalised
    pixels would make the budget meaningless: both are errors that say what to pass instead. The value
    range needs a device-to-host sync, so attackers check it on their first call only (``check_range``).
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


def _check_settings(norm: str, eps: float, eps2: float, steps: int, alpha: float, momentum: float,
                    noise_std: float, patch_size: Optional[int]) -> None:
    """The constructor's checks: each names the bad argument and what is allowed."""
    if norm not in NORMS:
        raise AttackError(f"unknown norm '{norm}' (choose from {', '.join(NORMS)})")
    for name, value in (("eps", eps), ("eps2", eps2), ("alpha", alpha), ("noise_std", noise_std)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
            raise AttackError(f"{name} must be a number, got {value!r}")
        if value < 0:
            raise AttackError(f"{name} must be >= 0, got {value}")
    if norm in BOX_NORMS and eps > 1:
        raise AttackError(f"eps is in pixel units ([0, 1] scale), got {eps}: did you mean {eps:g} / 255?")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise AttackError(f"steps must be an integer >= 0, got {steps!r}")
    if not 0 <= momentum < 1:
        raise AttackError(f"momentum must be in [0, 1), got {momentum}")
    if norm in ("huber", "elastic") and eps2 <= 0:
        raise AttackError(f"norm '{norm}' needs eps2 > 0, got {eps2}")
    if norm == "huber" and eps <= 0 and steps > 0:
        raise AttackError(f"norm 'huber' needs eps > 0 (its penalty weight is eps2 / eps), got {eps}")
    if norm == "group" and not patch_size:
        raise AttackError("norm 'group' needs patch_size (the model's patch grid)")


def embedding_distance(embeds: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared L2 distance summed over the embedding dimension (the AFT loss)."""
    return (embeds.float() - targets.float()).pow(2).sum(dim=-1)


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


def _per_sample_l2(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (x.dim() - 1)))


class PGDAttacker(nn.Module):
    """Projected gradient descent with momentum, uniform start and per-iteration Gaussian noise.

    Args:
        norm: one of ``linf``, ``l2``, ``huber``, ``elastic``, ``group``.
        eps: budget in pixel units ([0, 1] scale), e.g. ``4 / 255``.
        eps2: second budget (pixel units) for ``huber`` and ``elastic``.
        steps: number of attack iterations K (0 returns the clean images).
        alpha: step size in pixel units.
        momentum: weight of the previous direction (0.9 in the official code).
        noise_std: std of the noise n resampled at every iteration (pixel units).
        random_start: start from U(-eps, eps) (projected) instead of 0.
        patch_size: patch grid of the ``group`` norm (the model's own patch size).
        maximize: ascend the loss (an attack); ``False`` descends it.
        freeze_params: put a module ``forward`` in eval mode with parameters frozen during the
            attack (``False`` keeps its mode and parameter graph: the naive reference behaviour).
    """

    def __init__(
        self,
        norm: str = "linf",
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
        _check_settings(norm, eps, eps2, steps, alpha, momentum, noise_std, patch_size)
        self.norm, self.eps, self.eps2, self.steps, self.alpha = norm, eps, eps2, steps, alpha
        self.momentum, self.noise_std, self.random_start = momentum, noise_std, random_start
        self.patch_size, self.maximize, self.freeze_params = patch_size, maximize, freeze_params
        self.last_losses: list[Tensor] = []
        """Mean loss (without R) at each iteration of the latest call, as detached tensors."""
        self._range_checked = False

    @classmethod
    def from_config(cls, cfg: AttackConfig, patch_size: Optional[int] = None, freeze_params: bool = True) -> "PGDAttacker":
        """Build from an :class:`AttackConfig` (budgets there are in 1/255 units)."""
        return cls(
            norm=cfg.norm, eps=cfg.eps / 255, eps2=cfg.eps2 / 255, steps=cfg.steps, alpha=cfg.alpha / 255,
            momentum=cfg.momentum, noise_std=cfg.noise_std / 255, random_start=cfg.random_start,
            patch_size=patch_size, freeze_params=freeze_params,
        )

    def extra_repr(self) -> str:
        eps2 = f", eps2={self.eps2 * 255:g}/255" if self.norm in ("huber", "elastic") else ""
        return (f"norm={self.norm}, eps={self.eps * 255:g}/255{eps2}, steps={self.steps}, "
                f"alpha={self.alpha * 255:g}/255, momentum={self.momentum}, noise_std={self.noise_std * 255:g}/255")

    # ------------------------------------------------------------------ geometry of each norm

    def penalty(self, delta: Tensor) -> Tensor:
        """R(delta): the soft part of the threat model (zero for the hard-constrained norms)."""
        if self.norm == "huber":
            # L2 over colour channels at each pixel, mean over batch and pixels. The epsilon
            # inside the root keeps the gradient finite at delta = 0.
            pixel_norm = (delta.pow(2).sum(dim=1) + _TINY).sqrt()
            return (self.eps2 / self.eps) * pixel_norm.mean()
        if self.norm == "elastic":
            excess = (delta.abs() - self.eps).clamp_min(0).pow(2)
            return (0.25 / self.eps2) * excess.flatten(1).sum(dim=1).mean()
        return delta.new_zeros(())

    def _groups(self, delta: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """View delta (B, C, H, W) as (B, C, nh, nw, p*p) blocks of the patch grid (zero-padded)."""
        p = self.patch_size
        b, c, h, w = delta.shape
        ph, pw = (-h) % p, (-w) % p
        padded = F.pad(delta, (0, pw, 0, ph))
        nh, nw = padded.shape[2] // p, padded.shape[3] // p
        blocks = padded.view(b, c, nh, p, nw, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh, nw, p * p)
        return blocks, (h, w)

    def _ungroup(self, blocks: Tensor, hw: tuple[int, int]) -> Tensor:
        p = self.patch_size
        b, c, nh, nw, _ = blocks.shape
        full = blocks.view(b, c, nh, nw, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * p, nw * p)
        return full[:, :, : hw[0], : hw[1]]

    def group_norms(self, delta: Tensor) -> Tensor:
        """L2 norm of each (sample, channel, patch) block: shape (B, C, nh, nw)."""
        blocks, _ = self._groups(delta)
        return blocks.norm(dim=-1)

    def normalise(self, g: Tensor) -> Tensor:
        """Steepest-ascent direction of unit size in the attack's geometry."""
        if self.norm in ("linf", "huber"):
            return g.sign()
        if self.norm == "group":
            blocks, hw = self._groups(g)
            blocks = blocks / blocks.norm(dim=-1, keepdim=True).clamp_min(_TINY)
            return self._ungroup(blocks, hw)
        return g / _per_sample_l2(g)

    def project(self, delta: Tensor) -> Tensor:
        """Map delta back into the hard constraint set (none for elastic)."""
        if self.norm in ("linf", "huber"):
            return delta.clamp(-self.eps, self.eps)
        if self.norm == "l2":
            return delta * (self.eps / _per_sample_l2(delta)).clamp(max=1.0)
        if self.norm == "group":
            blocks, hw = self._groups(delta)
            scale = (self.eps / blocks.norm(dim=-1, keepdim=True).clamp_min(_TINY)).clamp(max=1.0)
            return self._ungroup(blocks * scale, hw)
        return delta

    def init_delta(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The starting delta: U(-eps, eps) projected and kept inside [0, 1] (zeros without random start)."""
        if not self.random_start or self.eps == 0:
            return torch.zeros_like(images)
        u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        delta = self.project((2 * u - 1) * self.eps)
        return (images + delta).clamp(0, 1) - images

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
        check_pixels(images, check_range=not self._range_checked)
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
    """Control for the attack: uniform noise in the same budget, no gradient (`attack.mode: noise`)."""

    def __init__(self, attacker: PGDAttacker):
        super().__init__()
        self.attacker = attacker
        self.last_losses: list[Tensor] = []

    def forward(self, forward: Optional[Callable[[Tensor], Tensor]], images: Tensor,
                loss_fn: Optional[Callable[[Tensor], Tensor]] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """clamp(images + u, 0, 1) with u uniform in the attacker's budget; ``forward`` and ``loss_fn`` are unused
        (same call signature as :class:`PGDAttacker`)."""
        check_pixels(images, check_range=not self.attacker._range_checked)
        self.attacker._range_checked = True
        images = images.detach()
        u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        delta = self.attacker.project((2 * u - 1) * self.attacker.eps)
        return (images + delta).clamp(0, 1)
