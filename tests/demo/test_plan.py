"""Demo set-up: the threat-model overrides of each run, and the overrides the demo would silently replace."""

import pytest

from aft_hf.config import ConfigError, load_config
from aft_hf.demo.plan import HEADLINE, check_overrides, threat_label, threat_overrides


def test_threat_overrides_use_the_headline_budget_or_the_given_one():
    eps, eps2 = HEADLINE["huber"]
    assert threat_overrides("huber") == ["--attack.norm", "huber", "--attack.eps", f"{eps:g}",
                                         "--attack.eps2", f"{eps2:g}"]
    assert threat_overrides("huber", 2) == ["--attack.norm", "huber", "--attack.eps", "2", "--attack.eps2", "2"]
    assert threat_overrides("linf", 8) == ["--attack.norm", "linf", "--attack.eps", "8"]
    with pytest.raises(ConfigError, match="unknown threat model 'l7'"):
        threat_overrides("l7")


def test_threat_label_reads_the_config():
    cfg = load_config(None, threat_overrides("huber", 2))
    assert threat_label(cfg.attack) == "huber 2/255 + 2/255"


def test_overrides_the_demo_sets_and_typos_of_its_options_are_refused():
    check_overrides(["--lr", "1e-4"])
    with pytest.raises(ConfigError, match="--seed: the demo sets it for each run; use --seeds"):
        check_overrides(["--seed", "3"])
    with pytest.raises(ConfigError, match="did you mean --seeds"):
        check_overrides(["--sedes", "3"], demo_options=["--seeds", "--out"])
