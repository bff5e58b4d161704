"""Speed levers that change how a computation runs, never the result its caller reads.

Each lever is a ``perf.*`` config switch, equivalence-tested against the plain path
(``tests/test_perf.py``) and measured by ``benchmarks/aft_step.py --ablate``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPEncoderLayer, eager_attention_forward

from .model import ImageEncoder


class MatmulPatchEmbedding(nn.Conv2d):
    """A ViT patch embedding (a convolution whose stride equals its kernel) computed as one matmul.

    Such a convolution is exactly a linear map applied to each non-overlapping patch, so the image
    is reshaped into a ``(batch, patches, channels * p * p)`` matrix and multiplied by the flattened
    kernel. The attack needs the gradient with respect to the *input* at every one of its K
    iterations, and on CPU the convolution's input-gradient kernel is several times slower than
    the two matmuls that replace it (measured: 0.33 s vs 0.07 s for ViT-B/32, batch 8, one thread).
    The module keeps the convolution's parameter (same name, shape and values), so checkpoints,
    ``save_pretrained`` and ``state_dict`` are unchanged. Other convolution shapes fall back to
    ``nn.Conv2d.forward``.
    """

    def _is_patchify(self, x: Tensor) -> bool:
        kh, kw = self.kernel_size
        return (tuple(self.stride) == (kh, kw) and tuple(self.dilation) == (1, 1) and self.groups == 1
                and self.padding in ((0, 0), "valid") and x.dim() == 4
                and x.shape[-2] % kh == 0 and x.shape[-1] % kw == 0)

    def forward(self, x: Tensor) -> Tensor:
        if not self._is_patchify(x):
            return super().forward(x)
        kh, kw = self.kernel_size
        b, c, h, w = x.shape
        gh, gw = h // kh, w // kw
        patches = x.reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.reshape(b, gh, gw, self.out_channels).permute(0, 3, 1, 2)


def _patchifying_convs(module: nn.Module) -> list[nn.Conv2d]:
    """Each plain ``nn.Conv2d`` of ``module`` whose stride equals its kernel (larger than 1 x 1: a pointwise
    convolution is no patch embedding)."""
    return [sub for sub in module.modules()
            if type(sub) is nn.Conv2d and tuple(sub.stride) == tuple(sub.kernel_size) and sub.groups == 1
            and tuple(sub.kernel_size) != (1, 1) and tuple(sub.dilation) == (1, 1) and sub.padding in ((0, 0), "valid")]


@contextlib.contextmanager
def _as_class(modules: list[nn.Module], cls: type) -> Iterator[int]:
    """Give each of ``modules`` the class ``cls`` for a ``with`` block (same parameters, another ``forward``), and
    each its own class back on exit, an error included; yields how many were switched."""
    originals = [(module, type(module)) for module in modules]
    for module, _ in originals:
        module.__class__ = cls
    try:
        yield len(originals)
    finally:
        for module, original in originals:
            module.__class__ = original


def use_matmul_patch_embedding(module: nn.Module) -> int:
    """Switch every patchifying ``nn.Conv2d`` inside ``module`` to :class:`MatmulPatchEmbedding`.

    The switch is in place (the class of the existing module changes; its parameters stay the same
    objects), so it is safe before or after an optimiser was built. Returns how many were switched.
    """
    convs = _patchifying_convs(module)
    for conv in convs:
        conv.__class__ = MatmulPatchEmbedding
    return len(convs)


def matmul_patch_embedding(module: nn.Module) -> contextlib.AbstractContextManager[int]:
    """:func:`use_matmul_patch_embedding` for the duration of a ``with`` block (the evaluation attack's lever).

    On exit exactly the convolutions it switched become plain ``nn.Conv2d`` again, so a model whose
    trainer switched them already (``perf.patch_embedding_matmul``) keeps its own switch. Yields how
    many it switched.
    """
    return _as_class(_patchifying_convs(module), MatmulPatchEmbedding)


def restore_conv_patch_embedding(module: nn.Module) -> None:
    """Undo :func:`use_matmul_patch_embedding` (e.g. before handing the model to code that checks types exactly)."""
    for sub in module.modules():
        if type(sub) is MatmulPatchEmbedding:
            sub.__class__ = nn.Conv2d


_HARMLESS_HOOKS = ("transformers.utils.output_capturing", "torch.utils.module_tracker")
"""Where hooks come from that never read the other rows: transformers' output recorder (installed on every layer at
the first ``output_hidden_states`` or ``output_attentions`` request, then kept; it records only on such a request,
when the whole layer runs) and torch's module tracker (global hooks of ``FlopCounterMode`` and the memory tracker,
which note which module runs, not what it returns)."""


def _watched(layer: nn.Module, ancestors: Sequence[nn.Module] = ()) -> bool:
    """True when a hook (other than :data:`_HARMLESS_HOOKS`) could see the layer's short output: one on
    ``layer`` or any module inside it, on one of ``ancestors`` (the modules between the tower and the layer: they
    see the tower's ``last_hidden_state``), or a global module hook (``torch.nn.modules.module.register_module_forward_hook``
    and its kin)."""
    for sub in (*layer.modules(), *ancestors):
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks, sub._backward_hooks, sub._backward_pre_hooks):
            if any(getattr(hook, "__module__", None) not in _HARMLESS_HOOKS for hook in hooks.values()):
                return True
    return any(getattr(hook, "__module__", None) not in _HARMLESS_HOOKS for hooks in _GLOBAL_HOOKS for hook in hooks.values())


_GLOBAL_HOOKS = (module_hooks._global_forward_hooks, module_hooks._global_forward_pre_hooks,
                 module_hooks._global_backward_hooks, module_hooks._global_backward_pre_hooks)
"""torch's global module hooks, which every module's call runs (each an ordered dict, empty when none is set)."""


class ClassTokenLastLayer(CLIPEncoderLayer):
    """The last encoder layer of a CLIP vision tower, computing the class token's row only.

    Where the encoder's output is the pooled class token (CLIP's ``pooler_output`` and ``image_embeds``:
    the post-layernorm of the last layer's first row), the last layer's other rows are computed and thrown
    away. The class token needs every token's key and value, but only its own query, attention row, output
    projection and MLP; the rest (four fifths of the layer) is skipped. Same parameters (the class of the
    existing module changes), the same embedding up to float rounding (under dropout, the same distribution:
    the masks are drawn for one row). It returns a ``(batch, 1, width)`` hidden state, so it is switched on only
    where nothing reads the other rows (:func:`class_token_last_layer`), and runs the whole layer whenever
    something could: a request for hidden states or attentions, an attention mask, or a hook that would see its
    output (on the layer, a part of it, a module between the tower and it, or a global module hook; checked at
    every call, :func:`_watched`).
    """

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
        if (attention_mask is not None or kwargs.get("output_hidden_states") or kwargs.get("output_attentions")
                or _watched(self, getattr(self, "_class_token_ancestors", ()))):
            return super().forward(hidden_states, attention_mask, **kwargs)
        attn = self.self_attn
        normed = self.layer_norm1(hidden_states)
        batch, tokens, width = normed.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, x.shape[1], -1, attn.head_dim).transpose(1, 2)

        attend = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
        out, _ = attend(attn, heads(attn.q_proj(normed[:, :1])), heads(attn.k_proj(normed)), heads(attn.v_proj(normed)),
                        None, scaling=attn.scale, dropout=attn.dropout if attn.training else 0.0)
        hidden = hidden_states[:, :1] + attn.out_proj(out.reshape(batch, 1, width))
        return hidden + self.mlp(self.layer_norm2(hidden))


def _class_token_last_layers(modules: tuple[nn.Module, ...]) -> list[CLIPEncoderLayer]:
    """The last encoder layer of each CLIP image encoder in ``modules`` whose output is the pooled class token
    (:attr:`aft_hf.model.ImageEncoder.pools_class_token`), unless a hook watches it; each is given the modules
    between its tower and itself as ``_class_token_ancestors`` (whose hooks would see the tower's
    ``last_hidden_state``; :class:`ClassTokenLastLayer` checks them at every call)."""
    layers: list[CLIPEncoderLayer] = []
    for encoder in (sub for module in modules for sub in module.modules()):
        if isinstance(encoder, ImageEncoder) and encoder.pools_class_token:
            towers = [sub for sub in encoder.vision.modules() if isinstance(sub, CLIPEncoder)]
            last = towers[0].layers[-1] if len(towers) == 1 and len(towers[0].layers) else None
            if type(last) is not CLIPEncoderLayer or any(last is layer for layer in layers):
                continue
            path = next(name for name, sub in encoder.vision.named_modules() if sub is last).split(".")
            ancestors = [encoder.vision.get_submodule(".".join(path[:i])) for i in range(len(path))]
            if not _watched(last, ancestors):
                last._class_token_ancestors = ancestors
                layers.append(last)
    return layers


@contextlib.contextmanager
def class_token_last_layer(*modules: nn.Module) -> Iterator[int]:
    """For a ``with`` block, the last layer of every CLIP image encoder in ``modules`` that returns the pooled
    class token computes that token only (:class:`ClassTokenLastLayer`; the attack's
    ``APGDSpeed.class_token_last_layer``, the trainer's ``perf.class_token_last_layer``). On exit exactly the
    layers it switched get their class back; yields how many it switched (0 for SigLIP, LLaVA's patch tokens,
    a hooked layer, one switched already by an enclosing block, or a bare transformers model, whose
    ``last_hidden_state`` is its output: the lever acts on :class:`aft_hf.model.ImageEncoder` s, whose output is
    the pooled embedding).

    Inside the block, the encoder's own call is what reads the tower: calling its tower directly
    (``encoder.vision(...)``) returns a one-row ``last_hidden_state`` unless hidden states are asked for. Hooks on the
    layer, a part of it, a module between the tower and the layer, or global module hooks make the whole layer run.
    The switch is visible to every user of the model while the block runs: do not share the model with another
    thread meanwhile."""
    layers = _class_token_last_layers(modules)
    try:
        with _as_class(layers, ClassTokenLastLayer) as switched:
            yield switched
    finally:
        for layer in layers:
            del layer._class_token_ancestors


__all__ = ["ClassTokenLastLayer", "MatmulPatchEmbedding", "class_token_last_layer", "matmul_patch_embedding",
           "restore_conv_patch_embedding", "use_matmul_patch_embedding"]
