"""The threat-model registry: one class per norm, read by the attacker, APGD, the config, the card and the demo.

A toy norm registered here (and removed afterwards) trains, is evaluated and reaches the model card
through the CLI with no edit anywhere else in the package.
"""

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from aft_hf import threat_models
from aft_hf.attack import AttackError, PGDAttacker, UniformNoise, embedding_distance
from aft_hf.cli import main
from aft_hf.config import ConfigError, load_config
from aft_hf.evaluate.apgd import apgd, attack_description
from aft_hf.threat_models import THREAT_MODELS, ThreatModel, apgd_norms, available_norms, register_threat_model
from tests.image_helpers import write_png_folder

PACKAGE = Path(__file__).resolve().parents[1] / "aft_hf"


class Toy(ThreatModel):
    """A per-pixel box with sign steps and an L1 penalty of weight eps2 / eps (registered only in these tests)."""

    name, label = "toy", "toy box"
    description = "a toy box of radius {eps}/255 with an L1 penalty (eps2 {eps2}/255)"
    uses_eps2, eps_per_pixel = True, True
    calls = {"direction": 0, "project": 0, "penalty": 0, "sample": 0}

    def penalty(self, delta):
        Toy.calls["penalty"] += 1
        return (self.eps2 / self.eps) * delta.abs().mean()

    def direction(self, grad):
        Toy.calls["direction"] += 1
        return grad.sign()

    def project(self, delta):
        Toy.calls["project"] += 1
        return delta.clamp(-self.eps, self.eps)

    def sample(self, like, generator=None):  # a corner of the box, so that its use is visible
        Toy.calls["sample"] += 1
        return torch.full_like(like, self.eps)


@pytest.fixture
def toy():
    register_threat_model(Toy)
    Toy.calls = dict.fromkeys(Toy.calls, 0)
    try:
        yield Toy
    finally:
        THREAT_MODELS.pop(Toy.name, None)


# --------------------------------------------------------------------------- the registry


def test_builtin_norms_and_their_properties():
    assert available_norms()[:5] == ("linf", "l2", "huber", "elastic", "group")
    assert apgd_norms() == ("linf", "l2")
    assert [n for n, c in THREAT_MODELS.items() if c.uses_eps2] == ["huber", "elastic"]
    assert not THREAT_MODELS["elastic"].needs_eps  # its eps is a threshold, 0 allowed
    with pytest.raises(AttackError, match="unknown norm 'l3'"):
        threat_models.get_threat_model("l3")


def test_elastic_has_no_box():
    """elastic projects nothing (it has a penalty, no hard set); linf and huber clamp."""
    delta = torch.full((1, 3, 4, 4), 0.5)
    assert torch.equal(THREAT_MODELS["elastic"](2 / 255, 1 / 255).project(delta), delta)
    for norm in ("linf", "huber"):
        assert THREAT_MODELS[norm](2 / 255, 1 / 255).project(delta).max() == pytest.approx(2 / 255)


def test_no_module_outside_the_registry_spells_a_norm_name():
    names = "|".join(available_norms())
    literal = re.compile(rf"""(["'])({names})\1""")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
            for p in sorted(PACKAGE.rglob("*.py")) if p.name != "threat_models.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert not hits, hits


# --------------------------------------------------------------------------- one set of rules


@pytest.mark.parametrize("norm,eps,eps2,steps,refused", [
    ("linf", 0, 0, 1, "eps"),          # the attacker accepted this before: a no-op attack
    ("l2", 0, 0, 1, "eps"),
    ("group", 0, 0, 1, "eps"),
    ("huber", 0, 1, 1, "eps"),
    ("linf", 0, 0, 0, None),           # no steps: nothing to attack with
    ("elastic", 0, 1, 1, None),        # eps is elastic's threshold, 0 is a pure L2 penalty
    ("huber", 1, 0, 1, "eps2"),
    ("elastic", 1, 0, 1, "eps2"),
    ("linf", 1, 0, 1, None),           # eps2 of a norm without one is ignored, as before
    ("linf", 300, 0, 1, "eps"),        # more than the whole pixel range
    ("l2", 300, 0, 1, None),           # an L2 radius may exceed it
])
def test_config_and_attacker_apply_the_same_budget_rules(norm, eps, eps2, steps, refused):
    args = ["--attack.norm", norm, "--attack.eps", str(eps), "--attack.eps2", str(eps2), "--attack.steps", str(steps)]
    try:
        load_config(None, args)
        config_refused = None
    except ConfigError as e:
        config_refused = re.findall(r"attack\.(eps2?):", str(e))
    try:
        PGDAttacker(norm=norm, eps=eps / 255, eps2=eps2 / 255, steps=steps, patch_size=8)
        attacker_refused = None
    except AttackError as e:
        attacker_refused = str(e)
        assert "\n" not in attacker_refused
    if refused is None:
        assert config_refused is None and attacker_refused is None
    else:
        assert config_refused == [refused] and attacker_refused is not None


def test_still_attack_is_refused_from_python_as_by_the_config():
    """Issue 20.17: no random start and no noise is a no-op attack; the class refuses it like the config."""
    with pytest.raises(AttackError, match="random_start false with noise_std 0") as e:
        PGDAttacker(random_start=False, noise_std=0)
    assert "\n" not in str(e.value) and "no-op" in str(e.value)
    with pytest.raises(ConfigError, match="attack.random_start false with attack.noise_std 0"):
        load_config(None, ["--attack.random_start", "false", "--attack.noise_std", "0"])
    PGDAttacker(random_start=False, noise_std=0, steps=0)  # no attack at all
    PGDAttacker(random_start=False, noise_std=0, maximize=False)  # descent from the start point is meaningful
    PGDAttacker(random_start=False, noise_std=1 / 255)


def test_steps_given_in_1_255_units_to_the_pixel_unit_class_are_refused():
    """PGDAttacker takes pixel units; ``alpha=1`` (the config's 1/255 units) would step across the whole range."""
    with pytest.raises(AttackError, match=r"alpha is in pixel units .*got 1: .*did you mean 1/255") as e:
        PGDAttacker(norm="linf", eps=4 / 255, alpha=1)
    assert "\n" not in str(e.value)
    with pytest.raises(AttackError, match=r"noise_std is in pixel units .*got 2"):
        PGDAttacker(norm="l2", eps=0.5, noise_std=2)
    PGDAttacker(norm="l2", eps=3.0, alpha=1.5)  # an L2 step is a length, not a per-pixel change: allowed
    PGDAttacker(norm="linf", eps=4 / 255, alpha=0.9)


def test_noise_control_in_mode_noise_needs_no_attack_settings():
    """`attack.mode noise` with random_start false and noise_std 0 is valid; the control does not build a PGD."""
    cfg = load_config(None, ["--attack.random_start", "false", "--attack.noise_std", "0", "--attack.mode", "noise"])
    noise = UniformNoise.from_config(cfg.attack)
    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    assert 0 < (noise(None, images) - images).abs().max() <= 4 / 255 + 1e-6


# --------------------------------------------------------------------------- APGD reads the class


def test_apgd_refuses_by_property_not_by_name(toy):
    images, labels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0])
    def forward(x):
        return x.flatten(1)[:, :3] + torch.tensor([10.0, 0.0, 0.0])  # class 0 by a margin eps cannot cross
    with pytest.raises(AttackError, match="APGD cannot attack norm 'toy' .*linf, l2"):
        apgd(forward, images, labels, 4 / 255, "toy", iterations=2)
    with pytest.raises(AttackError, match="APGD cannot attack norm 'huber'"):
        apgd(forward, images, labels, 4 / 255, "huber", iterations=2)

    class ToyBox(Toy):  # the same geometry without eps2, declared attackable
        name, label, uses_eps2, apgd_supported = "toybox", "toy box", False, True

    register_threat_model(ToyBox)
    try:
        assert apgd_norms() == ("linf", "l2", "toybox")
        adv, _ = apgd(forward, images, labels, 4 / 255, "toybox", iterations=3)
    finally:
        THREAT_MODELS.pop(ToyBox.name)
    assert toy.calls["direction"] > 0 and toy.calls["project"] > 0 and toy.calls["sample"] == 1
    assert (adv - images).abs().max() <= 4 / 255 + 1e-6
    assert attack_description("apgd", "toy") == "APGD-CE+APGD-T, toy box"


def test_robust_accuracy_takes_the_norms_apgd_supports_with_either_attack():
    """PGD evaluation follows ``norm`` too (it was L-inf only); a zero budget is the clean accuracy, not an
    attack with eps 0 (which the attacker now refuses)."""
    from aft_hf.evaluate import EvaluationError, ZeroShotClassifier, robust_accuracy

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6))
    clf = ZeroShotClassifier(encoder, torch.randn(4, 6))
    images = torch.rand(8, 3, 8, 8)
    labels = clf(images).argmax(1).detach()
    for norm in apgd_norms():
        acc = robust_accuracy(clf, images, labels, eps=(0, 64), steps=3, attack="pgd", norm=norm, progress=False)
        assert acc["0/255"] == 1.0 and acc["64/255"] < 1.0
    with pytest.raises(EvaluationError, match=r"robust accuracy attacks linf, l2 \(the norms APGD supports\), not norm "
                                              "'huber'$"):
        robust_accuracy(clf, images, labels, eps=(1,), attack="pgd", norm="huber", progress=False)
    with pytest.raises(EvaluationError, match="not unknown norm 'l3'"):
        robust_accuracy(clf, images, labels, eps=(1,), attack="pgd", norm="l3", progress=False)


def test_a_norm_apgd_cannot_attack_cannot_declare_it():
    """A norm with a second budget that declared apgd_supported crashed inside APGD (eps2 > 0, got 0.0)."""
    with pytest.raises(AttackError, match="norm 'blue' declares apgd_supported but has a second budget"):
        class Blue(ThreatModel):
            name, uses_eps2, apgd_supported = "blue", True, True
    with pytest.raises(AttackError, match="patch grid"):
        class Grid(ThreatModel):
            name, needs_patch_size, apgd_supported = "grid", True, True


@pytest.mark.slow
def test_evaluate_measures_robust_accuracy_under_the_norm_asked_for(tmp_path):
    """evaluate measured L-inf only: --robust-norm l2 reaches the attack, the report, report.md and the card."""
    sample = tmp_path / "ws"
    assert main(["world", "sample", "--out", str(sample), "-n", "4"]) == 0
    common = ["evaluate", "--model", "builtin:world-clip", "--dataset", str(sample), "--metrics", "robust",
              "--attack-steps", "2", "--attack-targets", "1"]
    assert main([*common, "--robust-norm", "L2", "--eps", "64", "--out", str(tmp_path / "l2")]) == 0  # any case
    report = json.loads((tmp_path / "l2" / "report.json").read_text())
    attack = report["metrics"]["robust_attack"]
    assert attack["norm"] == "l2" and attack["name"].startswith("APGD-CE+APGD-T, L2")
    assert "L2" in (tmp_path / "l2" / "report.md").read_text()
    assert main([*common, "--robust-norm", "huber", "--eps", "1", "--out", str(tmp_path / "h")]) == 2
    assert main([*common[:6], "zeroshot", "--robust-norm", "l2", "--out", str(tmp_path / "z")]) == 2  # not run: refused


# --------------------------------------------------------------------------- the attacker and the noise control


def test_penalty_gradient_flows_through_the_registered_class(toy):
    """R is differentiated: a huge L1 weight keeps the toy attack's delta at 0 where linf moves it."""
    torch.manual_seed(0)
    weight = torch.randn(3 * 8 * 8, 4)
    def forward(x):
        return x.flatten(1) @ weight
    images = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    targets = forward(images)
    def loss(e):
        return embedding_distance(e, targets)
    kw = dict(eps=8 / 255, steps=5, alpha=1 / 255, noise_std=1 / 255, random_start=False)
    free = PGDAttacker(norm="toy", eps2=1e-9, **kw)(forward, images, loss, torch.Generator().manual_seed(0))
    heavy = PGDAttacker(norm="toy", eps2=1e6, **kw)(forward, images, loss, torch.Generator().manual_seed(0))
    assert toy.calls["penalty"] == 10
    assert (free - images).abs().mean() > 2 * (heavy - images).abs().mean()


def test_uniform_noise_samples_the_threat_model_and_checks_pixels_itself(toy):
    attacker = PGDAttacker(norm="toy", eps=4 / 255, eps2=1 / 255)
    images = torch.full((1, 3, 4, 4), 0.5)
    attacker(lambda x: x.flatten(1), images, lambda e: e.sum(1))  # the attacker has checked its range
    noise = UniformNoise(attacker)
    with pytest.raises(AttackError, match=r"in \[0, 1\]"):
        noise(None, images * 255)  # its own first-call check, not the attacker's flag
    assert torch.allclose(noise(None, images), images + 4 / 255)  # the class's own sample, not a copy of U(-eps, eps)


# --------------------------------------------------------------------------- a toy norm end to end through the CLI


@pytest.mark.slow
def test_toy_norm_trains_reports_and_reaches_the_card(toy, tiny_clip_path, tmp_path, caplog, capsys):
    from aft_hf.data import write_shapes_imagefolder

    data = write_png_folder(tmp_path / "imgs", 8)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(data),
                     "--output_dir", str(out), "--optim.batch_size", "4", "--max_steps", "2", "--warmup_steps", "0",
                     "--attack.norm", "toy", "--attack.eps", "4", "--attack.eps2", "1", "--attack.steps", "2",
                     "--logging.report_to", "none", "--cpu"]) == 0
    assert toy.calls["direction"] > 0 and toy.calls["penalty"] > 0 and toy.calls["sample"] > 0
    assert "norm=toy, eps=4/255, eps2=1/255" in caplog.text  # the run's log names the threat model
    summary = json.loads((out / "train_summary.json").read_text())
    assert "attack/last_iter_loss" in summary["log_history"][-1]
    final = out / "final"
    assert load_config(final / "aft_config.yaml").attack.norm == "toy"

    shapes = write_shapes_imagefolder(tmp_path / "shapes", num_images=8, size=40)
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(final), "--dataset", str(shapes), "--metrics", "zeroshot",
                 "--methods", "saliency", "--out", str(ev), "--device", "cpu"]) == 0
    report = next(ev.rglob("report.json"))
    assert 0 <= json.loads(report.read_text())["metrics"]["zeroshot_top1"] <= 1

    hub = tmp_path / "hub"
    assert main(["push", str(final), "--repo-id", "me/toy-aft", "--report", str(report), "--dry-run",
                 "--out", str(hub)]) == 0
    card = (hub / "README.md").read_text()
    assert "inside a toy box of radius 4/255 with an L1 penalty (eps2 1/255)." in card
    assert "| `attack.norm` | toy |" in card
    capsys.readouterr()


# --------------------------------------------------------------------------- docs/threat_models.md


def test_the_python_examples_of_the_doc_run_as_written():
    """Each ```python block runs; a line commented ``# AttackError: TEXT ...`` must raise that error, and
    a line followed by a ``# 'value'`` / ``# (tuple)`` comment line must evaluate to it."""
    doc = (PACKAGE.parent / "docs" / "threat_models.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    try:
        for block in blocks:
            lines = block.splitlines()
            plain = []
            for i, line in enumerate(lines):
                code, _, comment = line.partition("  #")
                expected = comment.strip()
                if expected.startswith("AttackError:"):
                    with pytest.raises(AttackError, match=re.escape(expected[len("AttackError:"):].strip(" .")[:30])):
                        exec("\n".join(plain + [code]), namespace)
                    continue
                if expected.startswith(("(", "'")) and code.strip():
                    exec("\n".join(plain), namespace)
                    assert repr(eval(code.strip(), namespace)) == expected
                    continue
                if line.startswith("# ") and i > 0:  # a result shown on the line below
                    exec("\n".join(plain[:-1]), namespace)
                    assert repr(eval(lines[i - 1], namespace)) == line[2:]
                    continue
                plain.append(line)
            exec("\n".join(plain), namespace)
        assert THREAT_MODELS["sparse_box"].description.startswith("an L-inf box")
    finally:
        THREAT_MODELS.pop("sparse_box", None)


def test_a_config_budget_already_divided_by_255_is_refused_with_the_value_meant():
    with pytest.raises(ConfigError, match=r"attack\.eps: eps is in 1/255 units: 0\.0157 means 0\.0157/255.*did you mean "
                                          r"4\.0035"):
        load_config(None, ["--attack.eps", "0.0157"])
    with pytest.raises(ConfigError, match=r"attack\.eps2: eps2 is in 1/255 units"):
        load_config(None, ["--attack.norm", "huber", "--attack.eps", "1", "--attack.eps2", "0.004"])
    load_config(None, ["--attack.eps", "0.5"])  # half a grey level: small, but a budget someone may study


@pytest.mark.parametrize("norm, eps, steps, alpha, warned", [
    ("l2", 128, 10, 1, True),      # the L-inf recipe's step in an L2 ball of radius 0.5: 10/255 of travel
    ("l2", 128, 10, 32, False),    # 2.5 x eps / steps
    ("linf", 4, 10, 1, False),     # the paper's recipe
    ("linf", 16, 10, 1, True),
    ("elastic", 1, 10, 1, False),  # no ball to cross
])
def test_an_attack_whose_steps_cannot_cross_its_budget_is_warned(norm, eps, steps, alpha, warned, caplog):
    args = ["--attack.norm", norm, "--attack.eps", str(eps), "--attack.steps", str(steps), "--attack.alpha", str(alpha)]
    if norm == "elastic":
        args += ["--attack.eps2", "1"]
    PGDAttacker.from_config(load_config(None, args).attack, patch_size=8)
    assert ("the attack moves at most that far from its random start" in caplog.text) is warned
    if warned:
        assert f"--attack.alpha {2.5 * eps / steps:.3g}" in caplog.text
