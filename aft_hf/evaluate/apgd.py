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
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attack import AttackError, attack_mode
from ..perf import class_token_last_layer, matmul_patch_embedding
from ..threat_models import DEFAULT_NORM, ThreatModel, apgd_norms, get_threat_model, norm_label

_TINY = 1e-12
ATTACK_NAMES = {"apgd": "APGD-CE+APGD-T", "pgd": "PGD"}
APGD_ITERATIONS = 100
"""The protocol's iterations per APGD run (Croce & Hein 2020; RobustVLM)."""
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


AUTOCAST_DTYPES: dict[str, Optional[torch.dtype]] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""accelerate's ``mixed_precision`` names -> the autocast dtype of the attack's forward passes."""


@dataclass(frozen=True)
class APGDSpeed:
    """How the attack is run, never what it decides. Each switch is a speed lever measured by
    ``benchmarks/apgd_vs_autoattack.py``; switched off, the run is the reference AutoAttack's way.

    - ``shrink``: an image leaves the batch as soon as it is fooled (the reference attacks every image
      for all iterations of a run); with ``batch_targets`` all its target rows leave together.
    - ``batch_targets``: the APGD-T runs against the ``targets`` classes go side by side, one batch of
      (images x targets) rows per restart instead of one run per class (the same verdict: an image is
      robust iff every run fails), the rows of an image leaving together once one of them fools it. On
      by default: an image that only its 5th target breaks no longer waits through four full runs first
      (world CLIP at 4/255: 2.3x faster than one run per class; at 2/255, where images stay robust, the
      wider batch 1.1x; ``docs/performance.md``).
    - ``max_rows``: side-by-side rows attacked at once, in chunks of whole images; default (None): as many
      as the images given to :func:`apgd_robust` (``robust_verdicts`` gives it the whole batch, with
      ``alive`` marking the images still attacked), so the attack holds no more rows, and no more memory,
      than that batch's one-run-per-class attack; always at least one image's ``targets`` rows.
    - ``autocast``: ``torch.bfloat16`` (or ``torch.float16`` on CUDA) runs the model's forward under
      ``torch.autocast`` on the images' device; losses, steps and projections stay fp32. bf16 rounds each value
      to about 2^-9 of itself, so verdicts can differ from fp32's on images whose margin is within that rounding
      (a few per cent of a small model's images; bounded in ``tests/evaluate/test_apgd.py``).
    - ``compile``: the forward goes through ``torch.compile`` (dynamic shapes, so rows leaving the batch do
      not recompile), which fuses the elementwise work between the matmuls. Costs a compilation first
      (about 50 s for a small CLIP on a 2-core CPU, cached on disk by torch for later processes); pays on
      long evaluations. Verdicts can differ from eager ones only on images that fp32 rounding decides.
    - ``patch_matmul``: a module's ViT patch embedding (a convolution whose stride equals its kernel) runs as
      a matmul during the attack (:func:`aft_hf.perf.matmul_patch_embedding`, the trainer's
      ``perf.patch_embedding_matmul``): the same map, whose input gradient costs far less than the
      convolution's on CPU. Switched back when the attack ends. Verdicts can differ only where fp32
      rounding decides, as with ``compile``.
    - ``class_token_last_layer``: the last layer of a CLIP image encoder whose output is the pooled class
      token computes that token's row only during the attack (:func:`aft_hf.perf.class_token_last_layer`):
      the other rows of that layer feed nothing the zero-shot head reads. Saves about four fifths of one
      layer per pass (world CLIP, 4 layers: 1.2x cheaper; ViT-B/32, 12 layers: a few per cent). Switched
      back when the attack ends; verdicts can differ only where fp32 rounding decides.
    """

    shrink: bool = True
    batch_targets: bool = True
    max_rows: Optional[int] = None
    autocast: Optional[torch.dtype] = None
    compile: bool = False
    patch_matmul: bool = True
    class_token_last_layer: bool = True

    @classmethod
    def from_mixed_precision(cls, mixed_precision: Optional[str], device: torch.device, **kwargs) -> "APGDSpeed":
        """The levers' defaults with autocast set from an accelerate-style ``mixed_precision`` (``no``, ``bf16``,
        ``fp16``; None = ``no``), as ``optim.mixed_precision`` and ``--mixed-precision`` spell it."""
        name = mixed_precision or "no"
        if name not in AUTOCAST_DTYPES:
            raise AttackError(f"unknown mixed precision '{name}' (choose from {', '.join(AUTOCAST_DTYPES)})")
        if name == "fp16" and torch.device(device).type == "cpu":
            raise AttackError("mixed precision fp16 is not supported on CPU (a GPU setting here, as in training): "
                              "use bf16 or no")
        return cls(autocast=AUTOCAST_DTYPES[name], **kwargs)

    def __post_init__(self) -> None:
        switches = ("shrink", "batch_targets", "compile", "patch_matmul", "class_token_last_layer")
        not_bool = [f"{name}={getattr(self, name)!r}" for name in switches if not isinstance(getattr(self, name), bool)]
        if not_bool:  # a string such as "false" would count as on
            raise AttackError(f"APGDSpeed switches must be True or False, got {', '.join(not_bool)}")
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
                                          or self.max_rows < 1):
            raise AttackError(f"APGDSpeed.max_rows must be None or an integer >= 1, got {self.max_rows!r}")
        if self.autocast not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise AttackError(f"APGDSpeed.autocast must be None, torch.bfloat16 or torch.float16, got {self.autocast}")


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``dtype`` (the same call on CPU and CUDA), or nothing for None / fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Rows:
    """The state of the rows still attacked, kept compact: :meth:`keep` gathers every tensor once when rows
    leave, instead of gathering and scattering the whole state at every iteration."""

    def __init__(self, **tensors: Tensor):
        self.__dict__.update(tensors)

    def keep(self, mask: Tensor) -> None:
        for name, value in list(self.__dict__.items()):
            setattr(self, name, value[mask])


def apgd(forward: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, eps: float, norm: str = DEFAULT_NORM,
         iterations: int = 100, loss: LossFn = ce_loss, target: Optional[Tensor] = None, rho: float = 0.75,
         momentum: float = 0.75, generator: Optional[torch.Generator] = None, groups: Optional[Tensor] = None,
         speed: APGDSpeed = APGDSpeed()) -> tuple[Tensor, Tensor]:
    """One APGD run. Returns ``(adversarial images, fooled)``; ``fooled[i]`` when some iterate of image i
    was misclassified (that iterate is returned), else the highest-loss point is returned.

    ``eps`` in pixel units ([0, 1] scale); ``loss(logits, labels, target)`` is maximised per sample.
    ``groups`` (one id in ``[0, rows)`` per row): once a row is fooled, every row of its group stops (the
    target rows of one image under ``APGDSpeed.batch_targets``); default: each row on its own.
    """
    threat = _threat(norm, eps)
    if speed.compile:
        forward = torch.compile(forward, dynamic=True)  # compiled once per process: later wrappers hit its cache
    images, labels = images.detach(), labels.detach()
    n, device = images.shape[0], images.device
    x = (images + threat.apgd_start(images, generator)).clamp(0, 1) if eps > 0 else images.clone()
    fooled, out = torch.zeros(n, dtype=torch.bool, device=device), x.clone()
    group_done = torch.zeros(n, dtype=torch.bool, device=device)
    s = _Rows(row=torch.arange(n, device=device), origin=images, labels=labels, x=x, x_prev=x,
              group=torch.arange(n, device=device) if groups is None else groups,
              target=labels if target is None else target.detach(),
              eta=torch.full((n,), 2.0 * eps, device=device, dtype=images.dtype))

    def evaluate(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            with autocast_context(device, speed.autocast):
                logits = forward(points)
            values = loss(logits, s.labels, None if target is None else s.target)
            (grad,) = torch.autograd.grad(values.sum(), points)
        return values.detach(), grad.detach(), logits.detach().argmax(dim=1) != s.labels

    def record(wrong: Tensor, points: Tensor) -> None:
        """Keep the first misclassified iterate of each row; with ``shrink``, drop the rows whose group is done."""
        first = wrong & ~fooled[s.row]
        fooled[s.row[first]], out[s.row[first]] = True, points[first]
        group_done[s.group[wrong]] = True
        if speed.shrink:
            leave = group_done[s.group]
            if leave.any():
                out[s.row[leave & ~fooled[s.row]]] = s.x_best[leave & ~fooled[s.row]]
                s.keep(~leave)

    s.cur_loss, s.grad, wrong = evaluate(x)
    s.best_loss, s.x_best, s.grad_best = s.cur_loss.clone(), x, s.grad
    s.increases = torch.zeros(n, device=device)
    s.best_at_mark, s.halved_at_mark = s.best_loss.clone(), torch.zeros(n, dtype=torch.bool, device=device)
    record(wrong, x)
    marks, last_mark = set(checkpoints(iterations)), 0
    for k in range(iterations):
        if s.row.numel() == 0 or eps == 0:
            break
        step = _bcast(s.eta, s.x)
        z = _project(s.x + step * threat.direction(s.grad), s.origin, threat)
        a = 1.0 if k == 0 else momentum
        new = _project(s.x + a * (z - s.x) + (1 - a) * (s.x - s.x_prev), s.origin, threat)
        s.x_prev, s.x = s.x, new
        new_loss, s.grad, wrong = evaluate(new)
        s.increases = s.increases + (new_loss > s.cur_loss).float()
        s.cur_loss = new_loss
        better = new_loss > s.best_loss
        s.best_loss = torch.where(better, new_loss, s.best_loss)
        s.x_best = torch.where(_bcast(better, new), new, s.x_best)
        s.grad_best = torch.where(_bcast(better, new), s.grad, s.grad_best)
        if k + 1 in marks:
            stalled = s.increases < rho * (k + 1 - last_mark)
            flat = ~s.halved_at_mark & (s.best_loss <= s.best_at_mark)
            halve = (stalled | flat) & ~group_done[s.group]
            s.eta = torch.where(halve, s.eta / 2, s.eta)
            # restart from the best point, without momentum
            back = _bcast(halve, new)
            s.x, s.x_prev = torch.where(back, s.x_best, s.x), torch.where(back, s.x_best, s.x_prev)
            s.grad, s.cur_loss = torch.where(back, s.grad_best, s.grad), torch.where(halve, s.best_loss, s.cur_loss)
            s.halved_at_mark, s.best_at_mark = halve, s.best_loss.clone()
            last_mark, s.increases = k + 1, torch.zeros_like(s.increases)
        record(wrong, new)  # the iterate that fooled is ``new``, not a checkpoint's restart point
    left = ~fooled[s.row]
    out[s.row[left]] = s.x_best[left]
    return out, fooled


def _targeted_rows(forward: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, ranked: Tensor,
                   eps: float, norm: str, iterations: int, count: int, generator: Optional[torch.Generator],
                   speed: APGDSpeed, max_rows: int) -> Tensor:
    """APGD-T against the ``count`` classes ranked 2nd, 3rd, ... side by side: one row per (image, target),
    in chunks of whole images of at most ``max_rows`` rows (one image at least). Returns which images were fooled."""
    fooled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    per_chunk = max(max_rows // count, 1)
    for start in range(0, len(images), per_chunk):
        chunk = slice(start, start + per_chunk)
        m = len(images[chunk])
        image_of_row = torch.arange(m, device=images.device).repeat_interleave(count)
        targets = ranked[chunk, 1:count + 1].reshape(-1)
        _, rows_fooled = apgd(forward, images[chunk][image_of_row], labels[chunk][image_of_row], eps, norm,
                              iterations, targeted_dlr_loss, targets, generator=generator, groups=image_of_row,
                              speed=speed)
        fooled[start:start + m] = rows_fooled.view(m, count).any(dim=1)
    return fooled


def apgd_robust(model: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, eps: float, norm: str = DEFAULT_NORM,
                iterations: int = 100, restarts: int = 1, targets: int = 9, seed: int = 0,
                clean_logits: Optional[Tensor] = None, speed: APGDSpeed = APGDSpeed(),
                ce_restarts: Optional[int] = None, alive: Optional[Tensor] = None) -> Tensor:
    """Per-image robustness (bool) under APGD-CE then APGD-T (AutoAttack's "standard" APGD part).

    An image is robust when it is classified correctly and every attack fails: ``restarts`` runs of
    APGD-CE, then ``restarts`` runs of APGD-T for each of the ``targets`` highest-ranked other classes
    (capped at classes - 1). Each attack only sees the images still robust. A module ``model`` runs in
    eval mode on frozen parameters during the attack. ``clean_logits`` (the model's logits on ``images``,
    when the caller has them) saves the clean forward; ``speed`` picks how the runs execute (:class:`APGDSpeed`).
    ``ce_restarts`` gives APGD-CE its own number of runs (default ``restarts``; the robust-CLIP benchmark's
    AutoAttack runs 5); ``alive`` restricts the attack to those of the correctly classified images (e.g. the
    survivors of a smaller budget); the others are not robust.
    """
    ce_restarts = restarts if ce_restarts is None else ce_restarts
    if iterations < 1 or restarts < 1 or ce_restarts < 1 or targets < 0 or eps < 0:
        raise AttackError(f"APGD needs iterations >= 1, restarts >= 1, ce_restarts >= 1, targets >= 0 and eps >= 0; "
                          f"got {iterations}, {restarts}, {ce_restarts}, {targets}, {eps}")
    generator = torch.Generator(device=images.device).manual_seed(seed)
    is_module = isinstance(model, nn.Module)
    frozen = attack_mode(model) if is_module else contextlib.nullcontext(model)
    patches = matmul_patch_embedding(model) if is_module and speed.patch_matmul else contextlib.nullcontext()
    last = class_token_last_layer(model) if is_module and speed.class_token_last_layer else contextlib.nullcontext()
    with frozen as forward, patches, last:
        clean = _predict(forward, images, speed) if clean_logits is None else clean_logits.detach()
        robust = clean.argmax(dim=1) == labels
        if alive is not None:
            robust &= alive
        if eps == 0:
            return robust
        ranked = clean.argsort(dim=1, descending=True)
        count = min(targets, clean.shape[1] - 1)
        runs = [(ce_loss, None)] * ce_restarts
        if speed.batch_targets and count > 0:
            runs += [(targeted_dlr_loss, "all")] * restarts
        else:
            for t in range(1, count + 1):
                runs += [(targeted_dlr_loss, ranked[:, t])] * restarts
        for loss, target in runs:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if isinstance(target, str):
                fooled = _targeted_rows(forward, images[idx], labels[idx], ranked[idx], eps, norm, iterations,
                                        count, generator, speed, speed.max_rows or len(images))
            else:
                _, fooled = apgd(forward, images[idx], labels[idx], eps, norm, iterations, loss,
                                 None if target is None else target[idx], generator=generator, speed=speed)
            robust[idx[fooled]] = False
    return robust


@torch.no_grad()
def _predict(forward: Callable[[Tensor], Tensor], images: Tensor, speed: APGDSpeed) -> Tensor:
    with autocast_context(images.device, speed.autocast):
        return forward(images).float()


def attack_description(attack: str, norm: str = DEFAULT_NORM, iterations: Optional[int] = None) -> str:
    """Short human-readable name of an evaluation attack, e.g. ``APGD-CE+APGD-T, L-inf``; an APGD run with other
    than the protocol's 100 iterations says so (``APGD-CE+APGD-T, L-inf, 5 iterations``): the name travels into
    the model card's metadata, where a weaker attack must not pass for the field's."""
    name = ATTACK_NAMES.get(attack, attack)
    if attack == "pgd" and iterations:
        name = f"PGD-{iterations}"
    weaker = f", {iterations} iterations" if attack == "apgd" and iterations and iterations != APGD_ITERATIONS else ""
    return f"{name}, {norm_label(norm)}{weaker}"


__all__ = ["APGDSpeed", "ATTACK_NAMES", "AUTOCAST_DTYPES", "apgd", "autocast_context", "apgd_robust", "attack_description",
           "ce_loss", "checkpoints",
           "targeted_dlr_loss"]

