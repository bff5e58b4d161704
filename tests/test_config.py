"""Config: YAML + overrides reach the run; every class of bad value gives one clear error listing all problems."""

from pathlib import Path

import pytest

from aft_hf.config import ConfigError, TrainConfig, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    assert isinstance(load_config(CONFIGS / name), TrainConfig)


def test_paper_recipe_values():
    cfg = load_config(CONFIGS / "aft_vit_b16_huber.yaml")
    assert (cfg.model.name_or_path, cfg.attack.norm, cfg.attack.eps, cfg.attack.eps2) == \
        ("openai/clip-vit-base-patch16", "huber", 1.0, 1.0)
    assert (cfg.attack.steps, cfg.attack.alpha, cfg.optim.max_steps, cfg.optim.warmup_steps) == (10, 1.0, 20000, 1400)
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.model.output_normalize) == (128, 1e-5, 1e-4, True)
    fare = load_config(CONFIGS / "fare4_vit_l14.yaml")
    assert (fare.model.name_or_path, fare.attack.norm, fare.attack.eps, fare.model.output_normalize) == \
        ("openai/clip-vit-large-patch14", "linf", 4.0, False)


def test_overrides_dotted_bare_and_equals(tmp_path):
    cfg = load_config(CONFIGS / "tiny_offline.yaml", [
        "--lr", "2e-5", "--attack.eps", "2", "--optim.betas=[0.8,0.9]", "--resume_from_checkpoint", "latest",
        "--hub.push_to_hub", "--hub_model_id", "me/x", "--model.output_normalize", "false",
        "--max_samples", "null", "--output_dir", str(tmp_path)])
    assert cfg.optim.lr == 2e-5 and cfg.attack.eps == 2.0 and isinstance(cfg.attack.eps, float)
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.checkpoint.resume_from_checkpoint == "latest"
    assert cfg.hub.push_to_hub is True and cfg.hub.hub_model_id == "me/x"
    assert cfg.model.output_normalize is False
    assert cfg.checkpoint.output_dir == str(tmp_path)
    assert cfg.data.max_samples is None


def test_string_override_stays_a_string():
    nested, problems = parse_overrides(["--model.name_or_path", "123"])
    assert not problems and nested == {"model": {"name_or_path": "123"}}


def test_every_problem_listed_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  norm: l3\n  eps: -1\n  steps: ten\noptim:\n  max_steps: 10\n  warmup_steps: 50\n"
                   "unknown_section: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["--lr", "-1", "--bogus", "3"])
    text = str(err.value)
    for expected in ["unknown override '--bogus'", "unknown key 'unknown_section'", "attack.steps: expected int",
                     "unknown norm 'l3'", "attack.eps: must be >= 0", "optim.lr: must be > 0",
                     "warmup_steps (50) is longer than training"]:
        assert expected in text, expected
    assert "a norm you registered in Python exists in that process only" in text
    assert len(err.value.problems) == 7


@pytest.mark.parametrize("override,fragment", [
    (["--attack.norm", "huber", "--attack.eps2", "0"], "needs eps2 > 0"),
    (["--optim.batch_size", "10", "--optim.gradient_accumulation_steps", "3"], "not divisible"),
    (["--optim.mixed_precision", "fp8"], "mixed_precision"),
    (["--hub.push_to_hub", "true"], "needs hub.hub_model_id"),
    (["--resume", "latest"], "unknown override '--resume'"),
    (["--model.output_normalize", "maybe"], "expected bool"),
    (["--lr"], "needs a value"),
])
def test_each_bad_value_has_a_clear_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(CONFIGS / "tiny_offline.yaml", override)


def test_output_dir_inside_a_local_data_folder_is_refused(tmp_path, monkeypatch):
    """datasets would read the run's files (train_summary.json, eval_history.json) as data and split the folder
    by their names: refused at start, with the other problems; data inside output_dir is fine."""
    imgs = tmp_path / "imgs"
    (imgs / "a").mkdir(parents=True)
    monkeypatch.chdir(imgs)
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny_offline.yaml", ["--data.dataset", ".", "--output_dir", "out", "--lr", "-1"])
    assert len(err.value.problems) == 2 and "optim.lr: must be > 0" in str(err.value)
    assert "output_dir 'out' lies inside the data folder data.dataset '.'" in str(err.value)
    for key, value in (("data.dataset", str(imgs)), ("data.data_dir", str(imgs)), ("eval.eval_dataset", "a/..")):
        extra = ["--data.dataset", "imagefolder"] if key == "data.data_dir" else []
        with pytest.raises(ConfigError, match=f"inside the data folder {key} "):
            load_config(CONFIGS / "tiny_offline.yaml", extra + [f"--{key}", value, "--output_dir", str(imgs / "a")])
    monkeypatch.chdir(tmp_path)
    assert load_config(CONFIGS / "tiny_offline.yaml", ["--data.dataset", "imgs", "--output_dir", "imgs_out"])
    assert load_config(CONFIGS / "tiny_offline.yaml", ["--data.dataset", "imgs", "--output_dir", "."])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "aft_vit_b16_huber.yaml")
    (tmp_path / "r.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "r.yaml") == cfg


def test_fields_a_run_does_not_read_are_named_and_marked_on_the_card():
    """`--attack.mode noise --attack.alpha 7`, an eps2 of L-inf, TeCoA's text model under the AFT objective: accepted
    silently and listed on the card as the recipe. Training now warns about them and the card marks them."""
    from aft_hf.card import _recipe_section
    from aft_hf.config import unread_fields

    cfg = load_config(None, ["--attack.mode", "noise", "--attack.alpha", "7", "--attack.eps2", "3",
                             "--model.text_model", "org/clip"])
    assert unread_fields(cfg) == ["attack.alpha", "attack.eps2", "model.text_model"]
    assert "attack.steps" in unread_fields(cfg, given_only=False)  # default, unread all the same
    assert unread_fields(load_config(None, ["--objective", "tecoa", "--model.text_model", "org/clip"])) == []
    assert unread_fields(load_config(None, ["--attack.norm", "huber", "--attack.eps2", "3"])) == []
    card = _recipe_section(cfg.to_dict())
    assert "| `attack.alpha` | 7 (not read by this run) |" in card and "| `attack.eps` | 4 |" in card
    assert "| `attack.steps` | 10 (not read by this run) |" in card


def test_a_mistyped_yaml_key_gets_the_close_name(tmp_path):
    """The command line said "did you mean"; a YAML file only listed the section's keys."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("attack:\n  epss: 4\nseeed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(typo)
    text = str(err.value)
    assert "unknown key 'attack.epss'; did you mean 'attack.eps'?" in text and "unknown key 'seeed'; did you mean 'seed'?" in text
