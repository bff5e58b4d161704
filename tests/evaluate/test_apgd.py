"""APGD-CE + APGD-T: known answers on linear heads, agreement with the reference (pyautoattack), never
weaker than the package's PGD, the worst case per image, and how reports and the card name the attack."""

import json
import logging

import pytest
import torch
from torch import nn

from aft_hf.evaluate import ZeroShotClassifier, robust_accuracy
from aft_hf.evaluate import apgd as apgd_module
from aft_hf.evaluate.apgd import APGDSpeed, apgd_robust, checkpoints, targeted_dlr_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def _linear_two_class(seed: int = 0, n: int = 200, scale: float = 0.06):
    """logits = W x + b on x in [0, 1]^(3 x 4 x 4): points spread by ``scale`` around a template whose
    coordinates are partly at the box edges (0, 1) or within a few eps of them."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    template = torch.rand(1, 3, 4, 4, generator=g)
    edge = torch.rand(template.shape, generator=g)
    template = torch.where(edge < 0.2, 0.0, torch.where(edge > 0.8, 1.0, torch.where(edge > 0.6, 0.01, template)))
    x = (template + scale * (2 * torch.rand(n, 3, 4, 4, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 48, generator=g))
        model[1].bias.zero_()
        model[1].bias[0] = -(model(x)[:, 0] - model(x)[:, 1]).median()  # about half of each class
        labels = model(x).argmax(1)
    return model, x, labels


def _exact_linf_robust(model, x, labels, eps):
    """Worst case of a 2-class linear model over the L-inf ball intersected with the box: per coordinate a
    corner of [x - eps, x + eps] and [0, 1]; robust iff the worst margin stays positive."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    sign = torch.where(labels == 0, 1.0, -1.0).view(-1, 1)
    w_diff, b_diff = sign * (w[0] - w[1]), sign.squeeze(1) * (b[0] - b[1])
    flat = x.flatten(1)
    worst = (flat - eps * w_diff.sign()).clamp(0, 1)
    return (w_diff * worst).sum(1) + b_diff


@pytest.mark.parametrize("eps", [1 / 255, 4 / 255, 16 / 255])
def test_apgd_reaches_the_exact_linf_robust_accuracy_of_a_linear_head(eps):
    model, x, labels = _linear_two_class(scale=15 * eps)
    margin = _exact_linf_robust(model, x, labels, eps)
    keep = margin.abs() > 1e-3  # no ties at the decision boundary
    x, labels, margin = x[keep], labels[keep], margin[keep]
    exact = margin > 0
    assert 0.1 < exact.float().mean() < 0.9  # a non-trivial case
    robust = apgd_robust(model, x, labels, eps, iterations=10, targets=1)
    assert torch.equal(robust, exact)


@pytest.mark.parametrize("patch_matmul", [True, False])
def test_patch_embedding_runs_as_a_matmul_during_the_attack_only(patch_matmul):
    """APGDSpeed.patch_matmul (default on): during the attack a patchifying convolution runs as a matmul
    (its class, seen by a hook), and is a plain convolution again afterwards; the verdicts are the exact
    ones of the linear model either way (the convolution here copies each pixel to one channel)."""
    from aft_hf.perf import MatmulPatchEmbedding

    eps = 4 / 255
    head, x, labels = _linear_two_class(scale=15 * eps)
    patchify = nn.Conv2d(3, 48, kernel_size=4, stride=4, bias=False)
    with torch.no_grad():
        patchify.weight.copy_(torch.eye(48).view(48, 3, 4, 4))
    model = nn.Sequential(patchify, head)  # head = Flatten + Linear on the 48 copied pixels
    seen = set()
    patchify.register_forward_pre_hook(lambda module, args: seen.add(type(module)))
    margin = _exact_linf_robust(head, x, labels, eps)
    keep = margin.abs() > 1e-3
    robust = apgd_robust(model, x[keep], labels[keep], eps, iterations=10, targets=1,
                         speed=APGDSpeed(patch_matmul=patch_matmul))
    assert torch.equal(robust, margin[keep] > 0)
    assert seen == ({MatmulPatchEmbedding} if patch_matmul else {nn.Conv2d})
    assert type(patchify) is nn.Conv2d


@pytest.mark.parametrize("class_token_only", [True, False])
def test_last_layer_computes_the_class_token_only_during_the_attack(tiny_clip_path, class_token_calls, class_token_only):
    """APGDSpeed.class_token_last_layer (default on): every attack pass of a zero-shot CLIP runs the last layer for
    the class token alone (the only row the head reads), the layer is whole again afterwards, and the verdicts
    are those of the whole layer (rounding may decide an image at the decision boundary: one of 24 at most)."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    from aft_hf.model import load_image_encoder

    calls = class_token_calls
    torch.manual_seed(0)
    encoder = load_image_encoder(str(tiny_clip_path)).eval()
    clf = ZeroShotClassifier(encoder, torch.randn(5, encoder.vision.config.projection_dim)).eval()
    x = torch.rand(24, 3, 32, 32)
    with torch.no_grad():
        labels = clf(x).argmax(1)
    kwargs = dict(eps=1 / 255, iterations=5, targets=2)
    whole = apgd_robust(clf, x, labels, speed=APGDSpeed(class_token_last_layer=False), **kwargs)
    assert calls == []
    robust = apgd_robust(clf, x, labels, speed=APGDSpeed(class_token_last_layer=class_token_only), **kwargs)
    assert (len(calls) > 5) == class_token_only
    assert type(encoder.vision.vision_model.encoder.layers[-1]) is CLIPEncoderLayer
    assert 0 < int(whole.sum()) < len(x) and int((robust != whole).sum()) <= 1


def test_apgd_l2_reaches_the_exact_robust_accuracy_away_from_the_box_edges():
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    x = 0.5 + 0.2 * (2 * torch.rand(200, 3, 4, 4, generator=g) - 1)  # x - eps * w / ||w|| stays in [0, 1]
    eps = 0.05
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 48, generator=g))
        model[1].bias.zero_()
        model[1].bias[0] = -(model(x)[:, 0] - model(x)[:, 1]).median()
        logits = model(x)
    w = model[1].weight.detach()
    margin = (logits[:, 0] - logits[:, 1]).abs() - eps * (w[0] - w[1]).norm()  # the exact L2 worst case
    keep = margin.abs() > 1e-3
    exact = margin[keep] > 0
    assert 0.1 < exact.float().mean() < 0.9
    robust = apgd_robust(model, x[keep], logits[keep].argmax(1), eps, norm="l2", iterations=10, targets=1)
    assert torch.equal(robust, exact)


def test_checkpoints_and_targeted_dlr_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # 0.22, then steps shrinking by 0.03, >= 0.06
    assert checkpoints(3) == [1, 2, 3]
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) with y = 0, t = 1: -(2) / (5 - 0.5)
    assert targeted_dlr_loss(z, torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-2 / 4.5)
    assert targeted_dlr_loss(10 * z, torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-2 / 4.5)


def test_an_image_is_robust_only_if_every_attack_fails(monkeypatch):
    """APGD-CE first, then APGD-T against the classes ranked 2nd, 3rd, ... on the clean image; each run
    sees only the images still robust (one run per class, as the reference runs them)."""
    calls = []
    breaks = {0: [0], 2: [1]}  # run 0 (CE) breaks image 0, run 2 (2nd target) breaks image 1

    def fake_apgd(forward, images, labels, eps, norm, iterations, loss, target, generator=None, speed=None):
        run = len(calls)
        calls.append((loss.__name__, None if target is None else target.tolist(), images[:, 0, 0, 0].tolist()))
        fooled = torch.tensor([round(v) in breaks.get(run, []) for v in images[:, 0, 0, 0].tolist()])
        return images, fooled

    monkeypatch.setattr(apgd_module, "apgd", fake_apgd)
    logits = torch.tensor([[9.0, 1, 5, 7], [9.0, 8, 7, 1], [9.0, 2, 3, 4]])
    model = lambda x: logits[x[:, 0, 0, 0].round().long()]  # noqa: E731 image i carries its index
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2).contiguous()
    robust = apgd_robust(model, images, torch.zeros(3, dtype=torch.long), 1 / 255, targets=9,
                         speed=APGDSpeed(batch_targets=False))
    assert robust.tolist() == [False, False, True]
    assert [c[0] for c in calls] == ["ce_loss"] + ["targeted_dlr_loss"] * 3  # 9 targets capped at 4 - 1
    assert calls[0][2] == [0.0, 1.0, 2.0] and calls[1][2] == [1.0, 2.0] and calls[3][2] == [2.0]
    assert calls[1][1] == [1, 3] and calls[2][1] == [2, 2] and calls[3][1] == [1]  # ranked 2nd, 3rd, 4th


def test_batched_targets_attack_every_image_target_pair_in_one_run(monkeypatch):
    """APGDSpeed.batch_targets (the default): after APGD-CE, one APGD-T run holds one row per (image still robust,
    target), the rows of an image grouped, in chunks of whole images of at most max_rows rows (default: as many
    rows as images given, the memory of the batch's one-run-per-class attack)."""
    calls = []

    def fake_apgd(forward, images, labels, eps, norm, iterations, loss, target, generator=None, groups=None,
                  speed=None):
        calls.append((loss.__name__, None if target is None else target.tolist(), images[:, 0, 0, 0].tolist(),
                      None if groups is None else groups.tolist()))
        rows = images[:, 0, 0, 0].round().long()
        fooled = (rows == 0) if target is None else (rows == 1) & (target == 2)  # CE breaks 0, target 2 breaks 1
        return images, fooled

    monkeypatch.setattr(apgd_module, "apgd", fake_apgd)
    logits = torch.tensor([[9.0, 1, 5, 7], [9.0, 8, 7, 1], [9.0, 2, 3, 4]])
    model = lambda x: logits[x[:, 0, 0, 0].round().long()]  # noqa: E731 image i carries its index
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2).contiguous()
    robust = apgd_robust(model, images, torch.zeros(3, dtype=torch.long), 1 / 255, targets=9,
                         speed=APGDSpeed(batch_targets=True, max_rows=3))
    assert robust.tolist() == [False, False, True]
    assert [c[0] for c in calls] == ["ce_loss", "targeted_dlr_loss", "targeted_dlr_loss"]
    assert calls[1][1:] == ([1, 2, 3], [1.0, 1.0, 1.0], [0, 0, 0])  # image 1 against its classes ranked 2nd-4th
    assert calls[2][1:] == ([3, 2, 1], [2.0, 2.0, 2.0], [0, 0, 0])
    # the default: side by side, at most as many rows at once as images were given (3 here: one image a chunk)
    calls.clear()
    robust = apgd_robust(model, images, torch.zeros(3, dtype=torch.long), 1 / 255, targets=9)
    assert robust.tolist() == [False, False, True] and [len(c[2]) for c in calls] == [3, 3, 3]
    assert APGDSpeed().batch_targets and APGDSpeed().max_rows is None


def test_side_by_side_targets_go_in_chunks_of_whole_images(monkeypatch):
    """5 images, 2 targets, max_rows 4: chunks of 2, 2 and 1 images (4, 4 and 2 rows), each image's rows one group,
    every (image, target) pair attacked once."""
    calls = []

    def fake_apgd(forward, images, labels, eps, norm, iterations, loss, target, generator=None, groups=None,
                  speed=None):
        if target is not None:
            calls.append((images[:, 0, 0, 0].tolist(), target.tolist(), groups.tolist()))
        return images, torch.zeros(len(images), dtype=torch.bool)  # never fooled

    monkeypatch.setattr(apgd_module, "apgd", fake_apgd)
    model = lambda x: torch.tensor([[5.0, 1.0, 3.0]]).expand(len(x), 3)  # noqa: E731 ranks: 0, then 2, then 1
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    robust = apgd_robust(model, images, torch.zeros(5, dtype=torch.long), 1 / 255, targets=2,
                         speed=APGDSpeed(max_rows=4))
    assert robust.all()
    assert [len(c[0]) for c in calls] == [4, 4, 2]
    assert [c[0] for c in calls] == [[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [4.0, 4.0]]
    assert [c[1] for c in calls] == [[2, 1, 2, 1], [2, 1, 2, 1], [2, 1]]
    assert [c[2] for c in calls] == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0]]


def test_robust_verdicts_hand_apgd_the_whole_batch_with_the_images_still_attacked(monkeypatch):
    """robust_verdicts gives apgd_robust each whole batch and marks the survivors with ``alive`` (the side-by-side
    targets' rows are bounded by the batch, not by the survivors: 64 -> 3 survivors would be one image a chunk)."""
    from aft_hf.evaluate import zeroshot

    clf, x, y = _tiny_zero_shot(0)
    y[:5] = (y[:5] + 1) % 10  # 5 images wrong clean: not attacked
    seen, real = [], zeroshot.apgd_robust

    def spy(model, images, labels, *args, alive=None, **kwargs):
        seen.append((len(images), None if alive is None else int(alive.sum())))
        return real(model, images, labels, *args, alive=alive, **kwargs)

    monkeypatch.setattr(zeroshot, "apgd_robust", spy)
    verdicts = zeroshot.robust_verdicts(clf, x, y, eps=(1, 4), steps=3, targets=2, batch_size=32, progress=False)
    assert [n for n, _ in seen] == [32, 32, 32, 32]  # 2 batches x 2 budgets, each the whole batch
    assert seen[0][1] == 32 - 5 and seen[1][1] == int(verdicts["1/255"][:32].sum())  # the survivors only
    assert not verdicts["4/255"][:5].any()


def test_a_group_stops_once_one_of_its_rows_is_fooled():
    """Rows of one group share the verdict's fate: once one row is fooled the others leave the batch, so a
    forward counts fewer rows than without groups; the fooled row keeps its misclassified iterate."""
    model, x, labels = _linear_two_class(scale=0.2)
    seen = []

    def forward(images):
        seen.append(len(images))
        return model(images)

    x, labels = x[:40], labels[:40]
    _, alone = apgd_module.apgd(forward, x, labels, 8 / 255, iterations=20, generator=torch.Generator().manual_seed(0))
    alone_rows = sum(seen)
    assert 0 < int(alone.sum()) < 40
    seen.clear()
    groups = torch.arange(40) // 2
    adv, fooled = apgd_module.apgd(forward, x, labels, 8 / 255, iterations=20, groups=groups,
                                   generator=torch.Generator().manual_seed(0))
    assert sum(seen) < alone_rows
    with torch.no_grad():
        assert torch.equal(model(adv[fooled]).argmax(1) != labels[fooled], torch.ones(int(fooled.sum()), dtype=torch.bool))
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_shrinking_the_batch_leaves_the_verdicts_unchanged():
    """APGDSpeed.shrink only stops computing fooled rows: with the same random start, the same rows are fooled."""
    model, x, labels = _linear_two_class(scale=0.2)
    verdicts = [apgd_module.apgd(model, x, labels, 4 / 255, iterations=15, generator=torch.Generator().manual_seed(3),
                                 speed=APGDSpeed(shrink=shrink))[1] for shrink in (True, False)]
    assert 0 < int(verdicts[0].sum()) < len(x)
    assert torch.equal(verdicts[0], verdicts[1])


def _tiny_zero_shot(seed: int):
    """A small non-linear image encoder with a 10-class zero-shot head (logit scale 100), 64 images."""
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
    clf = ZeroShotClassifier(enc, torch.randn(10, 16), 100.0).eval()
    x = torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        y = clf(x).argmax(1)
    return clf, x, y


@pytest.mark.slow
@pytest.mark.parametrize("seed,eps", [(0, 8), (1, 8), (2, 4)])
def test_apgd_agrees_with_the_reference_autoattack(seed, eps):
    """Same model, images, iterations and targets: robust accuracies agree within 2 images of 64 (different
    random starts), and ours is never more than 2 images weaker. 25 iterations and 3 targets keep it short."""
    pyautoattack = pytest.importorskip("pyautoattack", reason="reference APGD: pip install aft_hf[autoattack]")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    clf, x, y = _tiny_zero_shot(seed)
    iterations, targets = 25, 3
    ours = apgd_robust(clf, x, y, eps / 255, iterations=iterations, targets=targets, seed=seed)
    aa = pyautoattack.AutoAttack(clf, attacks=["apgd-ce", "apgd-t"], version="custom", eps=eps / 255, norm="Linf",
                                 seed=seed)
    aa.verbose = False
    aa.apgd.n_restarts, aa.apgd_targeted.n_target_classes = 1, targets
    for attack in (aa.apgd, aa.apgd_targeted):  # its checkpoint schedule is set from n_iter in the constructor
        attack.n_iter = iterations
        attack.n_iter_2, attack.n_iter_min, attack.size_decr = int(0.22 * iterations), 1, 1
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=64)
    with torch.no_grad():
        reference = clf(x_adv).argmax(1) == y
    assert 0.05 < reference.float().mean() < 0.95
    assert abs(int(ours.sum()) - int(reference.sum())) <= 2
    assert int((ours & ~reference).sum()) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_apgd_never_reports_more_robustness_than_pgd(seed):
    clf, x, y = _tiny_zero_shot(seed)
    pgd = robust_accuracy(clf, x, y, eps=(2, 8), attack="pgd", progress=False)
    apgd = robust_accuracy(clf, x, y, eps=(2, 8), attack="apgd", steps=25, targets=3, progress=False)
    assert all(apgd[e] <= pgd[e] for e in pgd)
    assert apgd["8/255"] < 1.0


def test_card_names_the_attack_of_the_robust_accuracy():
    from aft_hf.card import eval_results_from_report, report_rows

    report = {"dataset": "d", "split": "test", "metrics": {
        "robust_top1": {"4/255": 0.25},
        "robust_attack": {"attack": "apgd", "name": "APGD-CE+APGD-T, L-inf", "norm": "linf", "steps": 100,
                          "restarts": 1, "targets": 9, "eps": ["4/255"]}}}
    (result,) = eval_results_from_report(report)
    assert result.metric_name == "Robust zero-shot top-1 accuracy (APGD-CE+APGD-T, L-inf), eps 4/255"
    report["metrics"]["robust_attack"] = {"norm": "linf", "steps": 10, "eps": ["4/255"]}  # an older PGD report
    assert report_rows(report)[0][0].name == "Robust zero-shot top-1 accuracy (PGD-10, L-inf)"


BF16_UNIT_ROUNDOFF = 2.0 ** -9  # bf16 keeps 8 significant bits: round-to-nearest is within 2^-9 relative


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_bf16_autocast_verdicts_match_the_exact_ones_outside_bf16_rounding(eps):
    """APGDSpeed(autocast=bf16) on a 2-class linear head: its inputs and weights are rounded to bf16 (relative
    error <= u = 2^-9 each) and the products summed in fp32, so a logit difference is off by at most
    (2u + u^2) * sum_i |w_i x_i| + u * (|b_0| + |b_1|) (+ fp32 summation, far smaller): every image whose exact worst-case margin
    is larger than that bound gets the exact verdict. The bound comes from bf16's format, not a CPU's rounding."""
    model, x, labels = _linear_two_class(scale=15 * eps)
    margin = _exact_linf_robust(model, x, labels, eps)
    w = model[1].weight.detach()
    worst = (x.flatten(1) + eps).clamp(0, 1)  # |x_i| of any point in the ball (x >= 0)
    u, bias = BF16_UNIT_ROUNDOFF, model[1].bias.detach().abs().sum()  # the bias is rounded to bf16 too
    bound = 1.01 * ((2 * u + u ** 2) * (worst @ w.abs().T).sum(1) + u * bias)
    clear = margin.abs() > bound
    assert clear.float().mean() > 0.5  # the bound leaves most images decidable: the test is not vacuous
    exact = margin > 0
    assert 0.1 < exact[clear].float().mean() < 0.9
    robust = apgd_robust(model, x, labels, eps, iterations=10, targets=1, speed=APGDSpeed(autocast=torch.bfloat16))
    assert torch.equal(robust[clear], exact[clear])


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_the_zero_shot_head_fp32():
    """Under the attack's autocast the encoder's matmuls run in bf16, the zero-shot head stays fp32 (bf16 logits
    at logit scale 100 would be 0.5 apart: near-ties would flip), and a fooled image is really misclassified."""
    clf, x, y = _tiny_zero_shot(0)
    seen = []
    clf.encoder[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with apgd_module.autocast_context(x.device, torch.bfloat16):
        logits = clf(x)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    adv, fooled = apgd_module.apgd(clf, x, y, 8 / 255, iterations=10, speed=APGDSpeed(autocast=torch.bfloat16),
                                   generator=torch.Generator().manual_seed(0))
    assert fooled.any()
    with torch.no_grad(), apgd_module.autocast_context(x.device, torch.bfloat16):
        assert (clf(adv[fooled]).argmax(1) != y[fooled]).all()


def test_mixed_precision_names_map_to_autocast_and_fp16_on_cpu_is_refused():
    assert APGDSpeed.from_mixed_precision("bf16", torch.device("cpu")).autocast == torch.bfloat16
    assert APGDSpeed.from_mixed_precision(None, torch.device("cpu")).autocast is None
    with pytest.raises(apgd_module.AttackError, match="fp16 is not supported on CPU"):
        APGDSpeed.from_mixed_precision("fp16", torch.device("cpu"))
    with pytest.raises(apgd_module.AttackError, match="unknown mixed precision 'fp8'"):
        APGDSpeed.from_mixed_precision("fp8", torch.device("cpu"))
    with pytest.raises(apgd_module.AttackError, match="max_rows"):
        APGDSpeed(max_rows=0)


@pytest.mark.parametrize("switch", ["shrink", "batch_targets", "compile", "patch_matmul", "class_token_last_layer"])
def test_apgd_speed_refuses_a_switch_that_is_not_a_bool(switch):
    """``compile="false"`` would be truthy and switch compilation on: every on/off lever must be a real bool."""
    with pytest.raises(apgd_module.AttackError, match=f"APGDSpeed switches must be True or False, got {switch}='false'"):
        APGDSpeed(**{switch: "false"})
    assert getattr(APGDSpeed(**{switch: False}), switch) is False


def test_robust_accuracy_in_bf16_stays_within_a_few_images_of_fp32():
    """The same evaluation under bf16 autocast: the robust accuracy may differ only on images whose margin is
    within bf16's rounding, a few of 64 on this small zero-shot model, never the bulk."""
    clf, x, y = _tiny_zero_shot(2)
    fp32 = robust_accuracy(clf, x, y, eps=(4,), steps=10, targets=2, progress=False)
    bf16 = robust_accuracy(clf, x, y, eps=(4,), steps=10, targets=2, progress=False,
                           speed=APGDSpeed(autocast=torch.bfloat16))
    assert 0.05 < fp32["4/255"] < 0.95
    assert abs(fp32["4/255"] - bf16["4/255"]) <= 4 / 64


@pytest.mark.slow
def test_compiled_attack_gets_the_exact_linf_verdicts_without_a_recompile_per_batch_size(monkeypatch):
    """APGDSpeed(compile=True): the forward really runs compiled (dynamo captures a graph), rows leaving the
    batch (shrink) do not compile it again for every batch size, and the verdicts are the exact ones away
    from the decision boundary (as for the eager attack)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    sizes, real_compile = set(), torch.compile

    def compile_and_watch(fn, **kwargs):  # the batch sizes the compiled forward is called with, seen from outside it
        compiled = real_compile(fn, **kwargs)
        return lambda x: (sizes.add(len(x)), compiled(x))[1]

    monkeypatch.setattr(torch, "compile", compile_and_watch)
    eps = 4 / 255
    model, x, labels = _linear_two_class(scale=15 * eps)
    margin = _exact_linf_robust(model, x, labels, eps)
    keep = margin.abs() > 1e-3
    x, labels, exact = x[keep], labels[keep], margin[keep] > 0
    torch._dynamo.reset()
    counters.clear()
    robust = apgd_robust(model, x, labels, eps, iterations=10, targets=1, speed=APGDSpeed(compile=True))
    assert torch.equal(robust, exact)
    graphs = counters["stats"]["unique_graphs"]
    assert len(sizes) >= 3  # the batch shrank through several sizes as rows were fooled (200 -> 195 -> 98 here)
    # one graph for every size: dynamic shapes from the start (static compiles one graph per size, 3 here;
    # torch's default, dynamic after the first recompile, 2; no compilation at all, 0)
    assert graphs == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_attack_compile_flag_reaches_the_apgd_of_the_robust_metric(tiny_clip_path, tmp_path, monkeypatch):
    """``aft-hf evaluate --attack-compile`` -> RobustOptions.compile -> APGDSpeed(compile=True) in the attack (the
    attack itself is run uncompiled here: compiling is the slow test above)."""
    import dataclasses

    from aft_hf.cli import main
    from aft_hf.data import write_shapes_imagefolder
    from aft_hf.evaluate import metrics as metrics_module

    seen, real = [], metrics_module.robust_verdicts

    def spy(*args, speed, **kwargs):
        seen.append(speed.compile)
        return real(*args, speed=dataclasses.replace(speed, compile=False), **kwargs)

    monkeypatch.setattr(metrics_module, "robust_verdicts", spy)
    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=4, size=32)
    for flag, out in (["--attack-compile", "--mixed-precision", "bf16"], "on"), ([], "off"):
        assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(data), "--max-samples", "4",
                     "--metrics", "robust", "--methods", "saliency", "--eps", "1", "--attack-steps", "1",
                     "--attack-targets", "0", "--out", str(tmp_path / out), *flag]) == 0
    assert seen == [True, False]
    # the report says how the attack ran where that can move a verdict (bf16) or a reader would ask (compiled)
    attack = {out: json.loads((tmp_path / out / "report.json").read_text())["metrics"]["robust_attack"] for out in ("on", "off")}
    assert attack["on"]["precision"] == "bf16" and attack["on"]["compiled"] is True
    assert "precision" not in attack["off"] and "compiled" not in attack["off"]
    notes = {out: (tmp_path / out / "report.md").read_text() for out in ("on", "off")}  # and so does report.md
    assert "under bf16 autocast" in notes["on"] and "compiled with torch.compile" in notes["on"]
    assert "autocast" not in notes["off"] and "torch.compile" not in notes["off"]


def test_attack_compile_with_pgd_is_refused_not_ignored(tmp_path, capsys):
    from aft_hf.cli import main
    from aft_hf.evaluate import RobustOptions

    with pytest.raises(ValueError, match="compile applies to the APGD attack only"):
        RobustOptions(attack="pgd", compile=True)
    assert main(["evaluate", "--model", "builtin:world-clip", "--dataset", str(tmp_path), "--metrics", "robust",
                 "--robust-attack", "pgd", "--attack-compile", "--out", str(tmp_path / "out")]) == 2
    assert "--attack-compile applies to --robust-attack apgd only" in capsys.readouterr().err


def test_alive_restricts_the_attack_to_correct_images_and_ce_restarts_are_checked():
    """``alive`` (the survivors of a smaller budget) narrows the attacked set, never widens it past the correctly
    classified images; ``ce_restarts`` must be >= 1 like ``restarts``."""
    model, x, labels = _linear_two_class()
    wrong = labels.clone()
    wrong[:5] = 1 - wrong[:5]  # the first five are now misclassified
    alive = torch.ones(len(x), dtype=torch.bool)
    alive[5:10] = False  # and the next five did not survive a smaller budget
    robust = apgd_robust(model, x, wrong, 0.0, iterations=1, targets=1, alive=alive)  # eps 0: no attack runs
    assert not robust[:10].any() and robust[10:].all()
    with pytest.raises(apgd_module.AttackError, match="ce_restarts >= 1"):
        apgd_robust(model, x, labels, 1 / 255, ce_restarts=0)
