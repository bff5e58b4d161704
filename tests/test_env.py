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


def _cpuinfo(tmp_path, text: str) -> str:
    path = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
    path.write_text(text)
    return str(path)


def test_native_bf16_is_read_from_the_cpu_flags_and_the_onednn_cap(tmp_path, monkeypatch):
    from aft_hf.env import cpu_bf16_native

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    amx = _cpuinfo(tmp_path, "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert cpu_bf16_native(amx) is True
    assert cpu_bf16_native(_cpuinfo(tmp_path, "flags\t: fpu avx2 avx512f avx512_bf16\n")) is True
    assert cpu_bf16_native(_cpuinfo(tmp_path, "flags\t: fpu sse avx2 avx512f avx512_vnni\n")) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # the flags are there, but oneDNN may not use them
    assert cpu_bf16_native(amx) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert cpu_bf16_native(amx) is True
    assert cpu_bf16_native(_cpuinfo(tmp_path, "processor\t: 0\nFeatures\t: fp asimd bf16\n")) is None  # not x86
    assert cpu_bf16_native(str(tmp_path / "absent")) is None


def test_emulated_bf16_warns_only_for_bf16_on_a_cpu_without_the_units(monkeypatch):
    import aft_hf.env as env

    monkeypatch.setattr(env, "cpu_bf16_native", lambda: False)
    assert "emulated" in env.emulated_bf16_warning("cpu", "bf16") and "30x slower" in env.emulated_bf16_warning(
        "cpu", "bf16")
    assert env.emulated_bf16_warning("cpu", "no") is None and env.emulated_bf16_warning("cuda", "bf16") is None
    for unknown_or_native in (None, True):
        monkeypatch.setattr(env, "cpu_bf16_native", lambda v=unknown_or_native: v)
        assert env.emulated_bf16_warning("cpu", "bf16") is None


def test_a_bf16_training_run_on_such_a_cpu_is_warned_at_launch(monkeypatch, caplog):
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType

    import aft_hf.env as env
    from aft_hf.config import TrainConfig
    from aft_hf.launch import apply_launch

    monkeypatch.setattr(env, "cpu_bf16_native", lambda: False)
    accelerator = SimpleNamespace(distributed_type=DistributedType.NO, mixed_precision="bf16",
                                  device=torch.device("cpu"), num_processes=1, is_main_process=True)
    cfg = TrainConfig()
    apply_launch(cfg, accelerator)
    assert cfg.optim.mixed_precision == "bf16" and "bf16 on this CPU is emulated" in caplog.text
