"""Auto-PGD (APGD) of Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks": the attack the robust-CLIP literature reports (APGD-CE then APGD-T).

Written here rather than imported from ``pyautoattack`` (an optional extra, used by the tests as the
reference): that package carries 45 MB of example weights and undeclared dependencies, and its
attacks print and check things the evaluate runner does not need. Everything works on pixels in
[0, 1] and any ``forward(images) -> logits``.

One APGD run (per image, all in parallel):

- start at a random point of the eps-ball (clipped to [0, 1]); step size eta = 2 * eps;
- step: z = P(x_k + eta * d(grad)), x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))
  (d and the ball of P are the threat model's direction and projection, :mod:`aft_hf.threat_models`:
  sign for L-inf, grad / ||grad||_2 for L2; P then clips to the [0, 1] box). APGD attacks the norms
  whose class sets ``apgd_supported``;
- checkpoints after 22% of the iterations, then after intervals shrinking by 3% (at least 6%): the
  step size halves, and the iterate returns to the best point found so far, when fewer than 75% of
  the steps since the last checkpoint raised the loss, or when the step size was not halved at the
  last checkpoint and the best loss has not improved since;
- an image is broken as soon as one iterate is misclassified (it then leaves the batch).

Losses: cross-entropy (APGD-CE), the targeted difference-of-logits ratio (APGD-T):
``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with z sorted decreasingly (pi1 the largest), against
each of the ``targets`` classes ranked highest after the label on the clean image.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attack import AttackError, attack_mode
from ..threat_models import DEFAULT_NORM, ThreatModel, apgd_norms, get_threat_model, norm_label

_TINY = 1e-12
ATTACK_NAMES = {"apgd": "APGD-CE+APGD-T", "pgd": "PGD"}
"""How reports and the model card name each ``--robust-attack``."""


def ce_loss(logits: Tensor, labels: Tensor, target: Optional[Tensor] = None) -> Tensor:
    """Per-sample cross-entropy of the label (to be maximised)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def targeted_dlr_loss(logits: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - mean(z_pi3, z_pi4))``, scale-invariant in the logits.

    With fewer than 4 classes the denominator uses what exists (``z_pi1 - z_pi3`` for 3 classes,
    1 for 2 classes, where the loss is the plain logit margin).
    """
    z = logits.float()
    rows = torch.arange(z.shape[0], device=z.device)
    ranked = z.sort(dim=1, descending=True).values
    if z.shape[1] >= 4:
        scale = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3])
    elif z.shape[1] == 3:
        scale = ranked[:, 0] - ranked[:, 2]
    else:
        scale = torch.ones_like(ranked[:, 0])
    return -(z[rows, labels] - z[rows, target]) / (scale + _TINY)


def checkpoints(iterations: int) -> list[int]:
    """Iteration counts after which the step size is checked: 22% first, then intervals shrinking by 3% (min 6%)."""
    first = max(int(0.22 * iterations), 1)
    shrink, smallest = max(int(0.03 * iterations), 1), max(int(0.06 * iterations), 1)
    out, at, interval = [], first, first
    while at <= iterations:
        out.append(at)
        interval = max(interval - shrink, smallest)
        at += interval
    return out


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _project(x: Tensor, origin: Tensor, threat: ThreatModel) -> Tensor:
    """Onto the threat model's ball around ``origin`` (its own projection), then into the [0, 1] box."""
    return (origin + threat.project(x - origin)).clamp(0, 1)


def _threat(norm: str, eps: float) -> ThreatModel:
    """The registered threat model ``norm`` at ``eps``; refused unless it declares ``apgd_supported``."""
    if not get_threat_model(norm).apgd_supported:
        raise AttackError(f"APGD cannot attack norm {norm!r} (it attacks {', '.join(apgd_norms())})")
    return get_threat_model(norm)(eps)


LossFn = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def apgd(forward: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, eps: float, norm: str = DEFAULT_NORM,
         iterations: int = 100, loss: LossFn = ce_loss, target: Optional[Tensor] = None, rho: float = 0.75,
         momentum: float = 0.75, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """One APGD run. Returns ``(adversarial images, fooled)``; ``fooled[i]`` when some iterate of image i
    was misclassified (that iterate is returned), else the highest-loss point is returned.

    ``eps`` in pixel units ([0, 1] scale); ``loss(logits, labels, target)`` is maximised per sample.
    """
    threat = _threat(norm, eps)
    images, labels = images.detach(), labels.detach()
    n = images.shape[0]
    x = (images + threat.apgd_start(images, generator)).clamp(0, 1) if eps > 0 else images.clone()

    def evaluate(idx: Tensor, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        points = points.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(points)
            values = loss(logits, labels[idx], None if target is None else target[idx])
            (grad,) = torch.autograd.grad(values.sum(), points)
        return values.detach(), grad.detach(), logits.detach().argmax(dim=1) != labels[idx]

    everyone = torch.arange(n, device=images.device)
    cur_loss, grad, wrong = evaluate(everyone, x)
    fooled, adv = wrong.clone(), x.clone()
    best_loss, x_best, grad_best = cur_loss.clone(), x.clone(), grad.clone()
    x_prev = x.clone()
    eta = torch.full((n,), 2.0 * eps, device=images.device, dtype=images.dtype)
    marks = set(checkpoints(iterations))
    last_mark, increases = 0, torch.zeros(n, device=images.device)
    best_at_mark, halved_at_mark = best_loss.clone(), torch.zeros(n, dtype=torch.bool, device=images.device)
    for k in range(iterations):
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0 or eps == 0:
            break
        xi, origin, step = x[idx], images[idx], _bcast(eta[idx], x[idx])
        z = _project(xi + step * threat.direction(grad[idx]), origin, threat)
        a = 1.0 if k == 0 else momentum
        new = _project(xi + a * (z - xi) + (1 - a) * (xi - x_prev[idx]), origin, threat)
        x_prev[idx] = xi
        x[idx] = new
        new_loss, new_grad, wrong = evaluate(idx, new)
        hit = idx[wrong]
        fooled[hit], adv[hit] = True, new[wrong]
        increases[idx] += (new_loss > cur_loss[idx]).float()
        cur_loss[idx], grad[idx] = new_loss, new_grad
        better = new_loss > best_loss[idx]
        up = idx[better]
        best_loss[up], x_best[up], grad_best[up] = new_loss[better], new[better], new_grad[better]
        if k + 1 in marks:
            stalled = increases < rho * (k + 1 - last_mark)
            flat = ~halved_at_mark & (best_loss <= best_at_mark)
            halve = (stalled | flat) & ~fooled
            eta[halve] /= 2
            # restart from the best point, without momentum
            x[halve], x_prev[halve], grad[halve] = x_best[halve], x_best[halve], grad_best[halve]
            cur_loss[halve] = best_loss[halve]
            halved_at_mark, best_at_mark = halve, best_loss.clone()
            last_mark, increases = k + 1, torch.zeros_like(increases)
    return torch.where(_bcast(fooled, adv), adv, x_best), fooled


@torch.no_grad()
def _predict(forward: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    return forward(images)


def apgd_robust(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, eps: float, norm: str = DEFAULT_NORM,
                iterations: int = 100, restarts: int = 1, targets: int = 9, seed: int = 0) -> Tensor:
    """Per-image robustness (bool) under APGD-CE then APGD-T (AutoAttack's "standard" APGD part).

    An image is robust when it is classified correctly and every attack fails: ``restarts`` runs of
    APGD-CE, then ``restarts`` runs of APGD-T for each of the ``targets`` highest-ranked other classes
    (capped at classes - 1). Each attack only sees the images still robust. A module ``model`` runs in
    eval mode on frozen parameters during the attack.
    """
    if iterations < 1 or restarts < 1 or targets < 0 or eps < 0:
        raise AttackError(f"APGD needs iterations >= 1, restarts >= 1, targets >= 0 and eps >= 0; got "
                         f"{iterations}, {restarts}, {targets}, {eps}")
    generator = torch.Generator(device=images.device).manual_seed(seed)
    frozen = attack_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext(model)
    with frozen as forward:
        clean = _predict(forward, images)
        robust = clean.argmax(dim=1) == labels
        if eps == 0:
            return robust
        ranked = clean.argsort(dim=1, descending=True)
        runs = [(ce_loss, None)] * restarts
        for t in range(1, min(targets, clean.shape[1] - 1) + 1):
            runs += [(targeted_dlr_loss, ranked[:, t])] * restarts
        for loss, target in runs:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _, fooled = apgd(forward, images[idx], labels[idx], eps, norm, iterations, loss,
                             None if target is None else target[idx], generator=generator)
            robust[idx[fooled]] = False
    return robust


def attack_description(attack: str, norm: str = DEFAULT_NORM, iterations: Optional[int] = None) -> str:
    """Short human-readable name of an evaluation attack, e.g. ``APGD-CE+APGD-T, L-inf``."""
    name = ATTACK_NAMES.get(attack, attack)
    if attack == "pgd" and iterations:
        name = f"PGD-{iterations}"
    return f"{name}, {norm_label(norm)}"


__all__ = ["ATTACK_NAMES", "apgd", "apgd_robust", "attack_description", "ce_loss", "checkpoints",
           "targeted_dlr_loss"]

