"""The registries of methods, metrics, norms and objectives: a name is checked once, at registration, and
looked up the way users type it; a replaced or shadowed built-in is said, not silent."""

import logging

import pytest

from aft_hf.attack import AttackError
from aft_hf.evaluate import METRICS, EvaluationError, Metric
from aft_hf.evaluate.runner import resolve_metrics
from aft_hf.explain import METHODS, AttributionMethod, Explainer, ExplainError, method_label, register_method
from aft_hf.registry import Registry
from aft_hf.threat_models import THREAT_MODELS, ThreatModel


@pytest.mark.parametrize("registry, error", [(METRICS, EvaluationError), (METHODS, ExplainError),
                                             (THREAT_MODELS, AttackError)])
@pytest.mark.parametrize("name", ["maskMean", "GradXInput", "grad-x", "my norm", "2d"])
def test_a_name_no_lookup_can_find_is_refused_at_registration(registry, error, name):
    cls = type("Thing", (), {"name": name})
    with pytest.raises(error, match=f"name '{name}' cannot be looked up: use lower-case letters, digits and _"):
        registry.register(cls)
    with pytest.raises(error, match="cannot be looked up"):
        registry[name] = cls  # the docs' way for metrics goes through the same check
    assert name not in registry


def test_aliases_are_checked_and_the_suggestion_is_a_valid_name():
    with pytest.raises(ExplainError, match=r"alias \(of 'foo'\) 'Foo-Bar' cannot be looked up.*e.g. 'foo_bar'"):
        METHODS.register(type("Foo", (), {"name": "foo", "aliases": ("Foo-Bar",)}))
    with pytest.raises(AttackError, match="e.g. 'my_norm'"):
        THREAT_MODELS.register(type("Mine", (), {"name": "My Norm"}))
    assert "foo" not in METHODS and "My Norm" not in THREAT_MODELS


def test_replacing_a_registered_class_is_said(caplog, monkeypatch):
    registry = Registry("norm", AttackError, aliases={"box": "linf"})
    first = registry.register(type("Linf", (), {"name": "linf"}))
    with caplog.at_level(logging.WARNING, logger="aft_hf.registry"):
        registry.register(type("Linf", (), {"name": "linf", "__module__": first.__module__}))  # a re-run cell: quiet
        assert caplog.text == ""
        registry.register(type("MyLinf", (), {"name": "linf"}))
        assert "norm 'linf' (tests.test_registry.Linf) is replaced by tests.test_registry.MyLinf" in caplog.text
        registry.register(type("Box", (), {"name": "box"}))
        assert "norm 'box' is also an alias of 'linf': the name now means the new norm" in caplog.text
    assert registry.resolve("BOX") == "box" and registry.resolve("Linf") == "linf"


def test_a_metric_registered_under_an_alias_name_is_the_one_that_runs(monkeypatch):
    """`sanity` was an alias of randomisation: a metric of yours named `sanity` silently never ran."""

    class MySanity(Metric):
        name = "sanity"

    assert resolve_metrics(["sanity", "Sparseness"], have_masks=False) == ["randomisation", "gini"]
    monkeypatch.setitem(METRICS, "sanity", MySanity)
    assert resolve_metrics(["sanity", "Sparseness"], have_masks=False) == ["sanity", "gini"]


def test_explainer_keeps_a_methods_own_defaults_unless_given(tiny_encoder):
    """Explainer's n_steps/stdevs defaults (32, 0.15) replaced the defaults of a method that reused those names."""

    @register_method
    class Blurred(AttributionMethod):
        name, aliases, needs_target = "blurred_toy", ("bt",), False
        options = {"n_steps": 4, "stdevs": 2.0}

        def raw_maps(self, images, targets):
            return images[:, :1] * self.n_steps

    try:
        assert (Explainer(tiny_encoder, "blurred_toy").impl.n_steps, Explainer(tiny_encoder, "bt").impl.stdevs) == (4, 2.0)
        assert Explainer(tiny_encoder, "blurred_toy", n_steps=7).impl.n_steps == 7
        assert Explainer(tiny_encoder, "integrated_gradients").impl.n_steps == 32  # the built-ins' own defaults
        assert Explainer(tiny_encoder, "smoothgrad").impl.stdevs == 0.15
        assert method_label("bt") == "blurred_toy" and method_label("ig") == "Integrated Gradients"
    finally:
        METHODS.pop("blurred_toy")


def test_builtin_names_are_what_users_type():
    for registry in (METRICS, METHODS, THREAT_MODELS):
        assert all(registry.key(name) == name for name in registry)
    assert issubclass(THREAT_MODELS["linf"], ThreatModel)
