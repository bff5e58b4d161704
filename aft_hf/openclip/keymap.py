"""The one map between transformers CLIP parameter names and open_clip's, used both ways.

open_clip keeps a tower's top-level tensors under short names (``conv1.weight``, ``proj``) and each
residual block under ``transformer.resblocks.{i}.``, with q, k and v fused into one ``in_proj``; transformers
keeps them under ``vision_model.*`` / ``text_model.*`` with separate q/k/v projections. A projection is
``x @ proj`` in open_clip and ``nn.Linear`` (``x @ W^T``) in transformers, hence the transposes.
"""

from __future__ import annotations

import torch
from torch import Tensor

TRANSPOSED = True

VISION_TOP = (  # (transformers name, open_clip name, transposed)
    ("vision_model.embeddings.patch_embedding.weight", "conv1.weight", False),
    ("vision_model.embeddings.class_embedding", "class_embedding", False),
    ("vision_model.embeddings.position_embedding.weight", "positional_embedding", False),
    ("vision_model.pre_layrnorm.weight", "ln_pre.weight", False),
    ("vision_model.pre_layrnorm.bias", "ln_pre.bias", False),
    ("vision_model.post_layernorm.weight", "ln_post.weight", False),
    ("vision_model.post_layernorm.bias", "ln_post.bias", False),
    ("visual_projection.weight", "proj", TRANSPOSED),
)
TEXT_TOP = (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", False),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", False),
    ("text_model.final_layer_norm.weight", "ln_final.weight", False),
    ("text_model.final_layer_norm.bias", "ln_final.bias", False),
    ("text_projection.weight", "text_projection", TRANSPOSED),
    ("logit_scale", "logit_scale", False),
)
BLOCK = (  # one encoder layer / residual block, relative names
    ("layer_norm1.weight", "ln_1.weight"), ("layer_norm1.bias", "ln_1.bias"),
    ("self_attn.out_proj.weight", "attn.out_proj.weight"), ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("layer_norm2.weight", "ln_2.weight"), ("layer_norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"), ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"), ("mlp.fc2.bias", "mlp.c_proj.bias"),
)
FUSED_QKV = (("self_attn.{}_proj.weight", "attn.in_proj_weight"), ("self_attn.{}_proj.bias", "attn.in_proj_bias"))
"""transformers' q, k, v projections, concatenated in that order into open_clip's ``in_proj``."""
VISION_LAYERS, TEXT_LAYERS = "vision_model.encoder.layers.", "text_model.encoder.layers."
RESBLOCKS = "transformer.resblocks."


def _top(t: Tensor, transposed: bool) -> Tensor:
    return t.t() if transposed else t


def to_open_clip(sd: dict[str, Tensor], top, layers_prefix: str, layers: int) -> dict[str, Tensor]:
    """transformers names (``top`` and ``layers`` blocks under ``layers_prefix``) -> open_clip names."""
    out = {oc: _top(sd[hf], tr) for hf, oc, tr in top}
    for i in range(layers):
        src, dst = f"{layers_prefix}{i}.", f"{RESBLOCKS}{i}."
        out.update({dst + oc: sd[src + hf] for hf, oc in BLOCK})
        out.update({dst + oc: torch.cat([sd[src + hf.format(p)] for p in "qkv"]) for hf, oc in FUSED_QKV})
    return out


def from_open_clip(state: dict[str, Tensor], top, layers_prefix: str, layers: int) -> dict[str, Tensor]:
    """open_clip names -> transformers names: the inverse of :func:`to_open_clip` (tensors made contiguous)."""
    out = {hf: _top(state[oc], tr) for hf, oc, tr in top}
    for i in range(layers):
        src, dst = f"{RESBLOCKS}{i}.", f"{layers_prefix}{i}."
        out.update({dst + hf: state[src + oc] for hf, oc in BLOCK})
        for hf, oc in FUSED_QKV:
            out.update({dst + hf.format(p): t for p, t in zip("qkv", state[src + oc].chunk(3, dim=0))})
    return {k: t.contiguous() for k, t in out.items()}


def vision_to_open_clip(sd: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """``vision_model.*`` + ``visual_projection.weight`` -> open_clip image-tower names (bare)."""
    return to_open_clip(sd, VISION_TOP, VISION_LAYERS, layers)


def vision_from_open_clip(state: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """open_clip image-tower names (bare) -> ``vision_model.*`` + ``visual_projection.weight``."""
    return from_open_clip(state, VISION_TOP, VISION_LAYERS, layers)


def text_to_open_clip(sd: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """``text_model.*`` + ``text_projection.weight`` + ``logit_scale`` -> open_clip CLIP top-level names."""
    return to_open_clip(sd, TEXT_TOP, TEXT_LAYERS, layers)


__all__ = ["from_open_clip", "text_to_open_clip", "to_open_clip", "vision_from_open_clip", "vision_to_open_clip"]
