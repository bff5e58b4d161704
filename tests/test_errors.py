"""The Python API refuses bad input at its entry points with an AftError that names the problem.

A researcher calling the library (not the CLI) should get ``unknown norm 'L3'`` or ``pixels must be in
[0, 1]``, not a shape error from inside torch or transformers, and never a silently wrong result
(8-bit pixels clamped to white by the attack, eps given in 1/255 units).
"""

import importlib
import importlib.metadata

import pytest
import torch
from transformers import CLIPVisionModelWithProjection

import aft_hf
from aft_hf import AftError, AttackError, InputError, PGDAttacker, embedding_distance
from aft_hf.evaluate import EvaluationError, ZeroShotClassifier, perturbation_curve, robust_accuracy, topk_accuracy
from aft_hf.explain import Explainer, ExplainError, explain
from aft_hf.model import ImageEncoder, tiny_clip_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def encoder():
    """A random tiny encoder built in memory (32 px, patch 8, 32-d embeddings)."""
    torch.manual_seed(0)
    return ImageEncoder(CLIPVisionModelWithProjection(tiny_clip_config().vision_config)).eval()


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="L3"), "unknown norm 'L3'"),
    (dict(eps=-1 / 255), "eps must be >= 0"),
    (dict(eps=4), "pixel units.*4 / 255"),
    (dict(norm="huber", eps=8, eps2=1 / 255), "pixel units"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(momentum=1.0), "momentum must be in"),
    (dict(eps="4/255"), "eps must be a number"),
    (dict(norm="huber", eps=0.0, eps2=1 / 255), "needs eps > 0"),
])
def test_attacker_settings_raise_attack_error(kwargs, match):
    with pytest.raises(AttackError, match=match) as info:
        PGDAttacker(**kwargs)
    assert isinstance(info.value, AftError) and isinstance(info.value, ValueError)


def test_l2_budget_above_one_is_allowed():
    """An L2 radius is not per pixel: 2.0 is a valid budget for a whole image."""
    assert PGDAttacker(norm="l2", eps=2.0).eps == 2.0


@pytest.mark.parametrize("make,match", [
    (lambda x: (x * 255).to(torch.uint8), "float tensor"),
    (lambda x: x * 255, r"in \[0, 1\]"),
    (lambda x: (x - 0.5) / 0.25, r"in \[0, 1\]"),
    (lambda x: x[0], r"\(B, C, H, W\)"),
    (lambda x: list(x), "torch.Tensor"),
    (lambda x: x.numpy(), "torch.Tensor"),
])
def test_attack_refuses_images_that_are_not_pixels(encoder, images, make, match):
    with torch.no_grad():
        targets = encoder(images)
    with pytest.raises(AttackError, match=match):
        PGDAttacker(steps=1)(encoder, make(images), lambda e: embedding_distance(e, targets))


def test_attack_checks_the_value_range_at_every_call_on_cpu_and_once_on_an_accelerator(encoder, images):
    """A reused attacker still refuses 0..255 images on CPU (the check is one reduction there); on an accelerator
    the check syncs the device with the host, so a training loop pays it on the first call only."""
    from aft_hf.attack import _range_due

    with torch.no_grad():
        targets = encoder(images)
    loss = lambda e: embedding_distance(e, targets)  # noqa: E731
    attacker = PGDAttacker(steps=1)
    attacker(encoder, images, loss)
    with pytest.raises(AttackError, match=r"in \[0, 1\]"):
        attacker(encoder, images * 255, loss)
    on_gpu = torch.empty(1, 3, 2, 2, device="meta")  # stands for a CUDA tensor: only its device type is read
    fresh = PGDAttacker(steps=1)
    assert _range_due(fresh, on_gpu) and _range_due(attacker, images)
    fresh._range_checked = True
    assert not _range_due(fresh, on_gpu)


@pytest.mark.parametrize("make,match", [
    (lambda x: x.permute(0, 2, 3, 1), "channels last"),
    (lambda x: (x * 255).to(torch.uint8), "float tensor"),
    (lambda x: torch.nn.functional.interpolate(x, size=48), "expects 32x32"),
    (lambda x: x[0], r"\(B, 3, H, W\)"),
])
def test_encoder_refuses_bad_pixels(encoder, images, make, match):
    with pytest.raises(InputError, match=match):
        encoder(make(images))


@pytest.mark.parametrize("target,match", [
    ("a photo of a dog", "not text"),
    (["a photo of a dog"], "not text"),
    (torch.randn(16), "dimension 16"),
])
def test_explain_target_errors(encoder, images, target, match):
    with pytest.raises(ExplainError, match=match):
        Explainer(encoder, "saliency", progress=False).attribute(images, target)


def test_explain_accepts_one_method_name(encoder, images):
    maps = explain(encoder, images, torch.randn(32), "saliency", progress=False)
    assert list(maps) == ["saliency"] and maps["saliency"].shape == (2, 1, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(attack="fgsm"), "unknown attack 'fgsm'"),
    (dict(norm="l1"), "unknown norm 'l1'"),
    (dict(eps=(-1,)), r"eps: budgets are >= 0 \(1/255 units\), got -1"),
    (dict(eps=(4 / 255,)), r"eps: eps is in 1/255 units: 0.0156863 means .* did you mean 4 \(the value already divided"),
    (dict(eps=(300,)), "at most 255, got 300"),  # it used to be found only after the clean batch, in pixel units
])
def test_robust_accuracy_settings_raise_evaluation_error(encoder, images, kwargs, match):
    classifier = ZeroShotClassifier(encoder, torch.randn(3, 32))
    with pytest.raises(EvaluationError, match=match):
        robust_accuracy(classifier, images, torch.tensor([0, 1]), steps=1, progress=False, **kwargs)


def test_evaluation_shape_errors(encoder, images):
    with pytest.raises(EvaluationError, match="dimension 16"):
        ZeroShotClassifier(encoder, torch.randn(3, 16))(images)
    with pytest.raises(EvaluationError, match="labels"):
        topk_accuracy(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(EvaluationError, match="deletion"):
        perturbation_curve(lambda x, y: x.mean((1, 2, 3)), images, torch.rand(2, 1, 32, 32), mode="del", progress=False)


@pytest.mark.parametrize("module", ["aft_hf", "aft_hf.explain", "aft_hf.evaluate", "aft_hf.data", "aft_hf.errors"])
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


def test_version_and_error_base_are_exported():
    assert aft_hf.__version__ == importlib.metadata.version("aft_hf")
    assert {"AftError", "AttackError", "InputError"} <= set(aft_hf.__all__)
    assert issubclass(AttackError, InputError) and issubclass(InputError, AftError)


def test_load_images_takes_one_path(png_folder):
    """A single path string is one image, not a sequence of one-character paths."""
    from aft_hf.data import load_images

    path = sorted((png_folder / "a").glob("*.png"))[0]
    assert load_images(str(path), 32).shape == (1, 3, 32, 32)
    assert load_images(path, 32).shape == (1, 3, 32, 32)
