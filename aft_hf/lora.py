"""LoRA adapters on the vision tower, through peft: fewer trainable weights, the same AFT loop.

peft's adapters are injected *in place* (``peft.inject_adapter_in_model``) rather than by wrapping the
tower in a ``PeftModel``: the tower keeps its transformers class, so everything that reads it (the
embedding, explain hooks, the attack's detached forward, export) works unchanged, and only the
adapter weights require gradients. What leaves the run is plain: :func:`merged_copy` folds each
adapter into its base weight and gives back the tower with its original parameter names, so
``final/`` loads with ``from_pretrained`` and no peft; :func:`save_adapter` writes the adapter alone
in peft's own format (``PeftModel.from_pretrained(base_tower, folder)``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from .errors import AftError

LoraConfig = Any
"""The ``lora`` config section (:class:`aft_hf.config.LoraConfig`); not imported here: config imports
the model layer, which imports this module."""

PEFT_PREFIX = "base_model.model."
"""Where ``PeftModel`` keeps the wrapped model: its state-dict keys carry this prefix."""


class LoraError(AftError, ValueError):
    """LoRA cannot be applied as configured (peft missing, no module matched)."""


def _peft():
    try:
        import peft
    except ImportError as e:
        raise LoraError("lora.r > 0 needs peft: pip install 'aft_hf[lora]' (or pip install peft)") from e
    return peft


def peft_config(cfg: LoraConfig):
    """The ``peft.LoraConfig`` of the ``lora`` config section."""
    return _peft().LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none")


def apply_lora(vision: nn.Module, cfg: LoraConfig) -> int:
    """Inject LoRA adapters into ``vision`` in place and freeze every other weight; returns the trainable count."""
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, _ in vision.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise LoraError(f"lora.target_modules {missing} match no module of the vision tower "
                        f"(linear layers of a CLIP tower: q_proj, k_proj, v_proj, out_proj, fc1, fc2)")
    peft.inject_adapter_in_model(peft_config(cfg), vision)
    for name, param in vision.named_parameters():
        param.requires_grad_("lora_" in name)
    return sum(p.numel() for p in vision.parameters() if p.requires_grad)


def has_lora(module: nn.Module) -> bool:
    """True when ``module`` holds peft LoRA layers."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return any(isinstance(m, LoraLayer) for m in module.modules())


def merged_copy(vision: nn.Module) -> nn.Module:
    """A copy of ``vision`` with every adapter folded into its base weight (W + scale * B @ A) and the
    LoRA layers replaced by their base layers: the original class and parameter names, no peft needed."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(vision)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged


def save_adapter(vision: nn.Module, base_vision: nn.Module, cfg: LoraConfig, out_dir: Union[str, Path],
                 base_model: Optional[str] = None) -> Path:
    """Write the adapter of ``vision`` in peft's format to ``out_dir``.

    ``base_vision`` is the tower without adapters (the frozen original); a copy of it is wrapped in a
    ``PeftModel`` and given the trained adapter weights, so the folder loads back with
    ``PeftModel.from_pretrained(CLIPVisionModelWithProjection.from_pretrained(base), out_dir)``.
    ``base_model`` (the Hub id trained from, :func:`aft_hf.card.base_model_of`; None for a local or builtin base, whose
    path means nothing elsewhere) goes into ``adapter_config.json`` and the folder's README, as peft's
    ``base_model_name_or_path``.
    """
    peft = _peft()
    state = peft.get_peft_model_state_dict(vision)
    wrapped = peft.get_peft_model(copy.deepcopy(base_vision), peft_config(cfg))
    result = peft.set_peft_model_state_dict(wrapped, {PEFT_PREFIX + k: v for k, v in state.items()})
    if getattr(result, "unexpected_keys", None):
        raise LoraError(f"adapter weights did not fit the base tower: {result.unexpected_keys[:3]}")
    wrapped.peft_config["default"].base_model_name_or_path = base_model
    wrapped.save_pretrained(str(out_dir))
    base = f"`{base_model}`" if base_model else "the base model this run was trained from"
    (Path(out_dir) / "README.md").write_text(  # instead of peft's empty template
        f"# LoRA adapter of an AFT run\n\nThe LoRA adapter (rank {cfg.r}, alpha {cfg.alpha:g}, on "
        f"{', '.join(cfg.target_modules)}) trained by `aft_hf` on the vision tower of {base}. The folder above holds "
        "the same model with the adapter merged in; to use the adapter itself:\n\n```python\n"
        "from peft import PeftModel\nfrom transformers import CLIPVisionModelWithProjection\n\n"
        f"base = CLIPVisionModelWithProjection.from_pretrained({base_model or 'BASE'!r})\n"
        "model = PeftModel.from_pretrained(base, 'adapter')\n```\n")
    return Path(out_dir)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser updates: the adapters under LoRA, every weight otherwise."""
    return [p for p in module.parameters() if p.requires_grad]


__all__ = ["LoraError", "apply_lora", "has_lora", "merged_copy", "save_adapter", "trainable_parameters"]
