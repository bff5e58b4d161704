"""Environment switches read by several layers (one parser, the same truth values as huggingface_hub)."""

from __future__ import annotations

import os

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants treats exactly these (any case) as true


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/on/yes/true (any case)."""
    return os.environ.get(name, "").strip().upper() in _TRUE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (in the environment, or as huggingface_hub read it at import): nothing can be
    fetched from (or pushed to) the Hub."""
    from huggingface_hub import constants

    return env_flag("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def datasets_offline() -> bool:
    """``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set: ``datasets`` cannot reach the Hub."""
    return env_flag("HF_DATASETS_OFFLINE") or hub_offline()
