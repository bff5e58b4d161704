"""The PGD attacker: it increases its loss, stays in its budget, and each norm behaves as docs/method.md says."""

import pytest
import torch
from torch import nn

from aft_hf.attack import PGDAttacker, UniformNoise, embedding_distance


def _target_loss(encoder, images):
    with torch.no_grad():
        targets = encoder(images)
    return lambda e: embedding_distance(e, targets)


def _attack(encoder, images, seed=0, **kw):
    torch.manual_seed(seed)
    attacker = PGDAttacker(patch_size=encoder.patch_size, **kw)
    adv = attacker(encoder, images, _target_loss(encoder, images))
    return attacker, adv


@pytest.mark.slow
def test_loss_rises_and_beats_clean(tiny_encoder, batch):
    attacker, adv = _attack(tiny_encoder, batch, norm="linf", eps=8 / 255, steps=10, alpha=2 / 255, noise_std=0)
    losses = torch.stack(attacker.last_losses)
    assert losses[-1] > losses[0]
    assert (losses[1:] >= losses[:-1] - 1e-7).float().mean() >= 0.7  # mostly monotone ascent
    with torch.no_grad():
        clean = embedding_distance(tiny_encoder(batch), tiny_encoder(batch)).mean()
        final = embedding_distance(tiny_encoder(adv), tiny_encoder(batch)).mean()
    assert clean == 0 and final > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "huber"])
def test_box_norms_stay_in_budget_and_image_range(tiny_encoder, batch, norm):
    eps = 4 / 255
    _, adv = _attack(tiny_encoder, batch, norm=norm, eps=eps, eps2=1 / 255, steps=5)
    assert (adv - batch).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.slow
def test_l2_stays_in_ball(tiny_encoder, batch):
    eps = 0.5
    _, adv = _attack(tiny_encoder, batch, norm="l2", eps=eps, steps=5, alpha=0.2)
    norms = (adv - batch).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()
    assert norms.max() > 0.5 * eps  # it actually uses its budget
    assert adv.min() >= 0 and adv.max() <= 1


def test_group_respects_per_patch_budget_on_non_224_grid(tiny_encoder):
    # 36 px with patch 8: a 5x5 grid whose last row/column are partial patches
    images = torch.rand(2, 3, 36, 36)
    attacker = PGDAttacker(norm="group", eps=0.05, steps=4, alpha=0.02, patch_size=8)
    def forward(x):
        return tiny_encoder(nn.functional.interpolate(x, size=32))
    with torch.no_grad():
        targets = forward(images)
    adv = attacker(forward, images, lambda e: embedding_distance(e, targets))
    norms = attacker.group_norms(adv - images)
    assert norms.shape == (2, 3, 5, 5)
    assert norms.max() <= 0.05 + 1e-5
    assert norms.max() > 0.02


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps2", [("huber", 4 / 255), ("elastic", 1 / 255)])
def test_penalty_gradient_reaches_delta(tiny_encoder, batch, norm, eps2):
    """huber/elastic differ from linf under the same seed only because R's gradient reaches delta."""
    eps = 4 / 255
    _, linf = _attack(tiny_encoder, batch, norm="linf", eps=eps, steps=5)
    attacker, soft = _attack(tiny_encoder, batch, norm=norm, eps=eps, eps2=eps2, steps=5)
    assert not torch.allclose(linf, soft)
    delta = torch.zeros_like(batch).uniform_(-2 * eps, 2 * eps).requires_grad_(True)
    (grad,) = torch.autograd.grad(attacker.penalty(delta), delta)
    assert grad.abs().sum() > 0


@pytest.mark.slow
def test_huber_penalty_makes_perturbation_sparser(tiny_encoder, batch):
    """A strong L2-over-colours penalty zeroes small-gradient pixels (soft thresholding)."""
    eps = 8 / 255
    _, linf = _attack(tiny_encoder, batch, norm="linf", eps=eps, steps=10, noise_std=0)
    _, huber = _attack(tiny_encoder, batch, norm="huber", eps=eps, eps2=500 / 255, steps=10, noise_std=0)
    def small(d):
        return ((d.abs() < eps / 2).float().mean())
    assert small(huber - batch) > small(linf - batch)


@pytest.mark.slow
def test_elastic_is_unconstrained_but_penalised(tiny_encoder, batch):
    eps = 2 / 255
    _, weak = _attack(tiny_encoder, batch, norm="elastic", eps=eps, eps2=1000 / 255, steps=10, alpha=0.05)
    _, strong = _attack(tiny_encoder, batch, norm="elastic", eps=eps, eps2=0.01 / 255, steps=10, alpha=0.05)
    assert (weak - batch).abs().max() > eps  # no hard box
    assert (strong - batch).abs().max() < (weak - batch).abs().max()


def test_attack_runs_in_eval_mode_without_parameter_graph(tiny_encoder, batch):
    tiny_encoder.zero_grad(set_to_none=True)  # session-wide encoder: a test run earlier may have left gradients
    tiny_encoder.train()
    seen = {}

    def record(module, args, kwargs, output):
        seen["training"] = module.training
        seen["param_graph"] = output.image_embeds.requires_grad and not kwargs["pixel_values"].requires_grad

    handle = tiny_encoder.vision.register_forward_hook(record, with_kwargs=True)
    fired = []
    hooks = [p.register_hook(lambda g: fired.append(1)) for p in tiny_encoder.parameters()]
    try:
        PGDAttacker(steps=2)(tiny_encoder, batch, lambda e: e.pow(2).sum(-1))
    finally:
        handle.remove()
    assert seen == {"training": False, "param_graph": False}
    assert not fired and all(p.grad is None for p in tiny_encoder.parameters())
    assert tiny_encoder.training and all(p.requires_grad for p in tiny_encoder.parameters())
    tiny_encoder(batch).sum().backward()  # hooks on the parameters survive the attack
    assert fired
    for h in hooks:
        h.remove()
    tiny_encoder.zero_grad(set_to_none=True)
    tiny_encoder.eval()


def test_reference_mode_keeps_parameter_graph(tiny_encoder, batch):
    seen = {}

    def record(module, args, output):  # returns None: a forward hook's return value replaces the output
        seen["param_graph"] = output.image_embeds.requires_grad

    handle = tiny_encoder.vision.register_forward_hook(record)
    try:
        PGDAttacker(steps=1, freeze_params=False)(tiny_encoder, batch.clone(), lambda e: e.pow(2).sum(-1))
    finally:
        handle.remove()
    assert seen["param_graph"]
    tiny_encoder.zero_grad(set_to_none=True)


def test_generic_forward_and_minimise():
    """Any differentiable forward and loss: minimising drives a quadratic towards its target."""
    images = torch.full((3, 3, 8, 8), 0.5)
    target = torch.full_like(images, 0.6)
    attacker = PGDAttacker(norm="linf", eps=0.2, steps=30, alpha=0.01, noise_std=0, maximize=False, random_start=False)
    adv = attacker(lambda x: x, images, lambda out: (out - target).pow(2).flatten(1).sum(1))
    assert torch.allclose(adv, target, atol=0.02)


def test_noise_control_stays_in_budget(tiny_encoder, batch):
    noise = UniformNoise(PGDAttacker(norm="linf", eps=4 / 255))
    adv = noise(tiny_encoder, batch)
    assert 0 < (adv - batch).abs().max() <= 4 / 255 + 1e-6


def test_noise_control_describes_its_budget():
    """The start-up line names the noise control's norm and budget, as it does PGD's."""
    assert repr(UniformNoise(PGDAttacker(norm="linf", eps=4 / 255))) == "UniformNoise(norm=linf, eps=4/255)"
    huber = UniformNoise(PGDAttacker(norm="huber", eps=4 / 255, eps2=2 / 255))
    assert "norm=huber" in repr(huber) and "eps=4/255" in repr(huber) and "eps2=2/255" in repr(huber)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="l3"), "unknown norm"),
    (dict(eps=-1.0), "eps must be >= 0"),
    (dict(norm="huber", eps2=0.0), "needs eps2"),
    (dict(norm="group"), "patch_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGDAttacker(**kwargs)
