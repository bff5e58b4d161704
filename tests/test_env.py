"""Environment switches: the same truth values as huggingface_hub, and the Hub switch implies the datasets one."""

import pytest

from aft_hf.env import datasets_offline, env_flag, hub_offline


@pytest.mark.parametrize("value, expected", [("1", True), ("on", True), (" Yes ", True), ("TRUE", True),
                                             ("0", False), ("false", False), ("", False), ("2", False)])
def test_env_flag_truth_values(monkeypatch, value, expected):
    monkeypatch.setenv("AFT_HF_TEST_FLAG", value)
    assert env_flag("AFT_HF_TEST_FLAG") is expected


def test_unset_flag_is_false(monkeypatch):
    monkeypatch.delenv("AFT_HF_TEST_FLAG", raising=False)
    assert env_flag("AFT_HF_TEST_FLAG") is False


def test_hub_offline_implies_datasets_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # what huggingface_hub read at import counts too
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert not hub_offline() and not datasets_offline()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert not hub_offline() and datasets_offline()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline() and datasets_offline()


def test_hub_offline_as_huggingface_hub_read_it_at_import(monkeypatch):
    """The tests force HF_HUB_OFFLINE=1 before huggingface_hub is imported: unsetting the variable later does not
    bring the Hub back for huggingface_hub, so aft_hf must not believe it either."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_offline()
