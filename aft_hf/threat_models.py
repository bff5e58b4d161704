"""Threat models: one registered class per norm, the only place that knows a norm by name.

A threat model is the geometry of an attack's perturbation ``delta`` (docs/method.md#threat-models):
its budget rules, its random start, its step direction, its projection onto the hard constraint set
and its soft penalty ``R(delta)``, plus what reports and cards say about it. The PGD attacker
(:mod:`aft_hf.attack`), APGD (:mod:`aft_hf.evaluate.apgd`), config validation, the model card and the
demo read everything norm-specific from here. Adding a norm is one class (docs/threat_models.md)::

    @register_threat_model
    class Linf1(ThreatModel):
        name, label = "l1", "L1"
        description = "an L1 ball of radius {eps}/255"

        def direction(self, grad):            # unit steepest-ascent step of the geometry
            ...

        def project(self, delta):             # back into the constraint set
            ...

    PGDAttacker(norm="l1", eps=8 / 255)       # and `aft-hf train --attack.norm l1`

Budgets of an instance are in pixel units ([0, 1] scale); configs and cards use 1/255 units.
"""

from __future__ import annotations

import abc
import numbers
from typing import ClassVar, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .registry import Registry

_TINY = 1e-12


class AttackError(InputError):
    """Bad attacker settings or inputs (unknown norm, negative budget, images not (B, C, H, W) floats in [0, 1])."""


THREAT_MODELS: Registry = Registry("norm", AttackError)
"""The registry: norm name -> threat-model class, in registration order (the choices of ``attack.norm``),
read by the attackers, the config, cards and the demo."""
register_threat_model = THREAT_MODELS.register
available_norms = THREAT_MODELS.names
get_threat_model = THREAT_MODELS.lookup


def apgd_norms() -> tuple[str, ...]:
    """Names of the threat models APGD can attack (``apgd_supported``)."""
    return tuple(name for name, cls in THREAT_MODELS.items() if cls.apgd_supported)


def norm_label(norm: str) -> str:
    """Display name of a norm for reports and cards (``L-inf``); the name itself when it is not registered."""
    cls = THREAT_MODELS.get(norm)
    return cls.label or cls.name if cls else str(norm)


def check_number(name: str, value: object) -> None:
    """Refuse a value that is not a real number >= 0 (bools and NaN included), naming the argument."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise AttackError(f"{name} must be a number, got {value!r}")
    if value < 0:
        raise AttackError(f"{name} must be >= 0, got {value}")


def still_start_problem(random_start: bool, noise_std: float, steps: int, maximize: bool = True,
                        prefix: str = "") -> Optional[str]:
    """Why an attack that starts at the clean image and never leaves it is refused (``None`` when it is fine).

    Without a random start and without noise, delta starts at 0, where the AFT loss (a distance to the
    clean output) is at its minimum with gradient 0: the attack never moves. ``prefix`` names the
    settings as the caller knows them (``attack.`` in a config). Descent (``maximize=False``) is allowed.
    """
    if not maximize or steps <= 0 or random_start or noise_std != 0:
        return None
    return (f"{prefix}random_start false with {prefix}noise_std 0: the attack starts at the clean image, where the "
            "distance to the frozen targets is at its minimum (gradient 0), so it never moves and training is a "
            f"no-op; keep {prefix}random_start true or {prefix}noise_std > 0")


def _per_sample_l2(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (x.dim() - 1)))


MIN_BUDGET_PER255 = 0.1
"""Budgets (in 1/255 units) below this are refused in configs: far below one grey level, they are a budget
already divided by 255 (4/255 = 0.0157 typed where 4 was meant), not an experiment."""


class ThreatModel(abc.ABC):
    """One norm bound to its budget: ``eps`` (and ``eps2`` where used) in pixel units, ``patch_size`` where needed.

    Subclasses set the class attributes below and implement :meth:`direction` and :meth:`project`;
    :meth:`penalty` (zero) and :meth:`sample` (uniform in the eps box, projected) have defaults.
    """

    name: ClassVar[str] = ""
    """The registered name (``attack.norm`` in configs, ``norm=`` in Python)."""
    label: ClassVar[str] = ""
    """Display name in reports and cards (``L-inf``); default ``name``."""
    description: ClassVar[str] = ""
    """The budget as the model card words it, with ``{eps}`` and ``{eps2}`` (1/255 units) filled in."""
    uses_eps2: ClassVar[bool] = False
    """The norm has a second budget ``eps2``, which must then be > 0."""
    needs_eps: ClassVar[bool] = True
    """``eps`` must be > 0 when the attack takes steps (with eps 0 the attack and the training are no-ops)."""
    eps_per_pixel: ClassVar[bool] = False
    """``eps`` bounds (or thresholds) each pixel coordinate, so more than the whole [0, 1] range is a unit mistake."""
    needs_patch_size: ClassVar[bool] = False
    """The geometry follows the model's patch grid (``patch_size`` is required)."""
    apgd_supported: ClassVar[bool] = False
    """APGD (:mod:`aft_hf.evaluate.apgd`) can attack this norm."""
    headline: ClassVar[Optional[tuple[float, Optional[float]]]] = None
    """The paper's headline training budget ``(eps, eps2)`` in 1/255 units; the demo trains the norms that have one."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.apgd_supported and (cls.uses_eps2 or cls.needs_patch_size):  # APGD has one budget and no model
            raise AttackError(f"norm '{cls.name}' declares apgd_supported but has a "
                              f"{'second budget (uses_eps2)' if cls.uses_eps2 else 'patch grid (needs_patch_size)'}: "
                              "APGD attacks a norm given by eps alone, so set apgd_supported = False")

    def __init__(self, eps: float, eps2: float = 0.0, patch_size: Optional[int] = None):
        check_number("eps", eps)
        check_number("eps2", eps2)
        problems = self.budget_problems(eps, eps2)
        if problems:
            raise AttackError(problems[0][1])
        if self.needs_patch_size and not patch_size:
            raise AttackError(f"norm '{self.name}' needs patch_size (the model's patch grid)")
        self.eps, self.eps2, self.patch_size = eps, eps2, patch_size

    @classmethod
    def budget_problems(cls, eps: float, eps2: float, steps: int = 0, per255: bool = False) -> list[tuple[str, str]]:
        """The norm's budget rules: ``(field, message)`` for each one broken (empty when fine).

        ``per255``: ``eps`` is in 1/255 units (a config) rather than pixel units. Signs and types are
        checked by the caller; these are the rules that depend on the norm.
        """
        p = []
        if cls.needs_eps and steps > 0 and eps <= 0:
            p.append(("eps", f"norm '{cls.name}' needs eps > 0 when the attack takes steps, got {eps}"))
        if cls.uses_eps2 and eps2 <= 0:
            p.append(("eps2", f"norm '{cls.name}' needs eps2 > 0, got {eps2}"))
        for name, value in (("eps", eps), ("eps2", eps2)):
            if per255 and 0 < value < MIN_BUDGET_PER255:
                p.append((name, f"{name} is in 1/255 units: {value:g} means {value:g}/255 = {value / 255:.1e} of the "
                                f"pixel range, a budget that does nothing; did you mean {value * 255:g} (the value "
                                "already divided by 255)?"))
        if cls.eps_per_pixel and eps > (255 if per255 else 1):
            p.append(("eps", f"norm '{cls.name}' bounds each pixel: eps is in 1/255 units, at most 255, got {eps}"
                      if per255 else f"eps is in pixel units ([0, 1] scale), got {eps}: did you mean {eps:g} / 255?"))
        return p

    @classmethod
    def reach_warning(cls, eps: float, steps: int, alpha: float) -> Optional[str]:
        """A warning when ``steps`` steps of length ``alpha`` (in this norm, the units of ``eps``, 1/255) cannot
        cross the budget ``eps``: the attack then stays close to its random start and is weak, silently (an L2
        budget of 128/255 with the L-inf recipe's step of 1/255, say). None when they can."""
        if not cls.needs_eps or steps <= 0 or eps <= 0 or alpha * steps >= eps:
            return None
        return (f"attack.alpha x attack.steps = {alpha * steps:g}/255 is less than the {cls.name} budget eps "
                f"{eps:g}/255: the attack moves at most that far from its random start, so it stays weak; a usual "
                f"step is 2.5 x eps / steps (--attack.alpha {2.5 * eps / steps:.3g})")

    @classmethod
    def budget_label(cls, eps: float, eps2: float = 0.0) -> str:
        """``linf 4/255`` or ``huber 1/255 + 1/255`` from budgets in 1/255 units (logs, demo labels)."""
        extra = f" + {eps2:g}/255" if cls.uses_eps2 else ""
        return f"{cls.name} {eps:g}/255{extra}"

    def penalty(self, delta: Tensor) -> Tensor:
        """R(delta), the soft part of the threat model (a scalar); its gradient must reach ``delta``."""
        return delta.new_zeros(())

    @abc.abstractmethod
    def direction(self, grad: Tensor) -> Tensor:
        """The steepest-ascent step of unit size in this geometry (e.g. ``grad.sign()`` for L-inf)."""

    @abc.abstractmethod
    def project(self, delta: Tensor) -> Tensor:
        """Map ``delta`` back into the hard constraint set (identity when there is none)."""

    def sample(self, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """A random delta in the budget: U(-eps, eps) per coordinate, projected (the PGD start, the noise control)."""
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.project((2 * u - 1) * self.eps)

    def init_delta(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The random start of PGD: :meth:`sample`, kept inside [0, 1] (zeros for a zero budget)."""
        if self.eps == 0:
            return torch.zeros_like(images)
        return (images + self.sample(images, generator)).clamp(0, 1) - images

    def apgd_start(self, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """APGD's random start (AutoAttack's); by default :meth:`sample`."""
        return self.sample(like, generator)


@register_threat_model
class Linf(ThreatModel):
    """The L-inf box: every pixel coordinate moves by at most eps; sign steps (FARE, TeCoA, robust accuracy)."""

    name, label = "linf", "L-inf"
    description = "an L-inf box of radius {eps}/255"
    eps_per_pixel, apgd_supported, headline = True, True, (4.0, None)

    def direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def project(self, delta: Tensor) -> Tensor:
        return delta.clamp(-self.eps, self.eps)


@register_threat_model
class L2(ThreatModel):
    """The L2 ball of radius eps around each image (a whole-image radius, so eps may exceed 1)."""

    name, label = "l2", "L2"
    description = "an L2 ball of radius {eps}/255"
    apgd_supported = True

    def direction(self, grad: Tensor) -> Tensor:
        return grad / _per_sample_l2(grad)

    def project(self, delta: Tensor) -> Tensor:
        return delta * (self.eps / _per_sample_l2(delta)).clamp(max=1.0)

    def apgd_start(self, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """AutoAttack's L2 start: a Gaussian direction scaled to the sphere of radius eps."""
        n = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.eps * n / _per_sample_l2(n)


@register_threat_model
class Huber(Linf):
    """The AFT paper's norm: the L-inf box and sign steps (inherited) plus
    R = (eps2/eps) * mean over pixels of the colour-channel L2 norm.

    The penalty soft-thresholds small gradients, which makes saliency maps sparser.
    """

    name, label = "huber", "Huber"
    description = "an L-inf box of radius {eps}/255 with a colour-channel L2 penalty (eps2 {eps2}/255)"
    uses_eps2, apgd_supported, headline = True, False, (1.0, 1.0)

    def penalty(self, delta: Tensor) -> Tensor:
        # L2 over colour channels at each pixel, mean over batch and pixels; the epsilon inside the
        # root keeps the gradient finite at delta = 0.
        pixel_norm = (delta.pow(2).sum(dim=1) + _TINY).sqrt()
        return (self.eps2 / self.eps) * pixel_norm.mean()


@register_threat_model
class Elastic(ThreatModel):
    """No hard constraint: R = (0.25/eps2) * sum of (|delta_i| - eps)_+^2 per sample, mean over the batch.

    ``eps`` is a per-coordinate threshold (so eps 0 is allowed), not a box: nothing is projected.
    """

    name, label = "elastic", "elastic net"
    description = "an elastic-net budget (eps {eps}/255, eps2 {eps2}/255)"
    uses_eps2, needs_eps, eps_per_pixel = True, False, True

    def penalty(self, delta: Tensor) -> Tensor:
        excess = (delta.abs() - self.eps).clamp_min(0).pow(2)
        return (0.25 / self.eps2) * excess.flatten(1).sum(dim=1).mean()

    def direction(self, grad: Tensor) -> Tensor:
        return grad / _per_sample_l2(grad)

    def project(self, delta: Tensor) -> Tensor:
        return delta


def patch_blocks(delta: Tensor, patch_size: int) -> Tensor:
    """View delta (B, C, H, W) as (B, C, nh, nw, p*p) blocks of the patch grid (zero-padded at the edges)."""
    p = patch_size
    b, c, h, w = delta.shape
    padded = F.pad(delta, (0, (-w) % p, 0, (-h) % p))
    nh, nw = padded.shape[2] // p, padded.shape[3] // p
    return padded.view(b, c, nh, p, nw, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh, nw, p * p)


def patch_unblock(blocks: Tensor, patch_size: int, hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patch_blocks`, cropped back to ``hw``."""
    p = patch_size
    b, c, nh, nw, _ = blocks.shape
    full = blocks.view(b, c, nh, nw, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * p, nw * p)
    return full[:, :, : hw[0], : hw[1]]


@register_threat_model
class Group(ThreatModel):
    """Group lasso over the patch grid: an L2 ball of radius eps for each (sample, channel, patch) block."""

    name, label = "group", "group (per-patch L2)"
    description = "a per-patch, per-channel L2 (group) budget of {eps}/255"
    needs_patch_size = True

    def direction(self, grad: Tensor) -> Tensor:
        blocks = patch_blocks(grad, self.patch_size)
        blocks = blocks / blocks.norm(dim=-1, keepdim=True).clamp_min(_TINY)
        return patch_unblock(blocks, self.patch_size, tuple(grad.shape[-2:]))

    def project(self, delta: Tensor) -> Tensor:
        blocks = patch_blocks(delta, self.patch_size)
        scale = (self.eps / blocks.norm(dim=-1, keepdim=True).clamp_min(_TINY)).clamp(max=1.0)
        return patch_unblock(blocks * scale, self.patch_size, tuple(delta.shape[-2:]))


DEFAULT_NORM = Linf.name
"""The default threat model of training, and the norm of robust-accuracy evaluation (the field's L-inf)."""


def robust_budget_problems(eps: Iterable[float], norm: str = DEFAULT_NORM) -> list[str]:
    """What is wrong with robust-accuracy budgets ``eps`` (1/255 units; 0 measures the clean images), one message per
    bad value: negative, already divided by 255 (``0.0157`` for 4/255 attacks nothing and reports the clean accuracy
    as robust), or past the pixel range. Checked with the options, before any model loads."""
    model = get_threat_model(norm)
    out = []
    for e in eps:
        if e < 0:
            out.append(f"budgets are >= 0 (1/255 units), got {e:g}")
        else:
            out += [message for name, message in model.budget_problems(e, 1.0, per255=True) if name == "eps"]
    return out


__all__ = ["DEFAULT_NORM", "THREAT_MODELS", "AttackError", "ThreatModel", "apgd_norms", "available_norms",
           "check_number", "get_threat_model", "norm_label", "patch_blocks", "register_threat_model",
           "robust_budget_problems", "still_start_problem"]
