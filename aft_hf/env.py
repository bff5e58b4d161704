"""Environment switches read by several layers (one parser, the same truth values as huggingface_hub)."""

from __future__ import annotations

import os

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants treats exactly these (any case) as true


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/on/yes/true (any case)."""
    return os.environ.get(name, "").strip().upper() in _TRUE


def launcher_precision(default: str = "no") -> str:
    """The precision ``accelerate launch --mixed_precision`` (or its config) asked for, normalised:
    ``ACCELERATE_MIXED_PRECISION`` stripped and lower-cased, ``default`` when unset or empty."""
    return (os.environ.get("ACCELERATE_MIXED_PRECISION") or default).strip().lower()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (in the environment, or as huggingface_hub read it at import): nothing can be
    fetched from (or pushed to) the Hub."""
    from huggingface_hub import constants

    return env_flag("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def datasets_offline() -> bool:
    """``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: ``datasets`` cannot reach the Hub."""
    return env_flag("HF_DATASETS_OFFLINE") or hub_offline()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs that compute bf16 matmuls natively (oneDNN's AVX512_CORE_BF16 / AMX)."""
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU runs bf16 matmuls natively: one of :data:`BF16_CPU_FLAGS` is listed and oneDNN is
    not capped below it (``ONEDNN_MAX_CPU_ISA``). None where it cannot be told (no x86 flags line to read)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_WITHOUT_BF16
    return any(flag in flags for flag in BF16_CPU_FLAGS) and not capped


def emulated_bf16_warning(device_type: str, precision: str | None) -> str | None:
    """A one-line warning when bf16 autocast is asked for on a CPU that would emulate it (measured about 30x
    slower than fp32 there, docs/performance.md), else None. The run stays valid, so this warns, not refuses."""
    if device_type != "cpu" or precision != "bf16" or cpu_bf16_native() is not False:
        return None
    return ("bf16 on this CPU is emulated (neither avx512_bf16 nor amx_bf16 usable): measured about 30x slower than "
            "fp32 (docs/performance.md, 'bf16 on CPU'); fp32 is the faster choice here")
