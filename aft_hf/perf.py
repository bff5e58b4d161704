"""Speed levers that change how a computation runs, never what it computes.

Each lever is a ``perf.*`` config switch, equivalence-tested against the plain path
(``tests/test_perf.py``) and measured by ``benchmarks/aft_step.py --ablate``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn


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


def _switch_patchifying_convs(module: nn.Module) -> list[nn.Conv2d]:
    """Switch each plain ``nn.Conv2d`` of ``module`` whose stride equals its kernel (larger than 1 x 1: a
    pointwise convolution is no patch embedding); returns the switched ones."""
    switched = [sub for sub in module.modules()
                if type(sub) is nn.Conv2d and tuple(sub.stride) == tuple(sub.kernel_size) and sub.groups == 1
                and tuple(sub.kernel_size) != (1, 1) and tuple(sub.dilation) == (1, 1)
                and sub.padding in ((0, 0), "valid")]
    for sub in switched:
        sub.__class__ = MatmulPatchEmbedding
    return switched


def use_matmul_patch_embedding(module: nn.Module) -> int:
    """Switch every patchifying ``nn.Conv2d`` inside ``module`` to :class:`MatmulPatchEmbedding`.

    The switch is in place (the class of the existing module changes; its parameters stay the same
    objects), so it is safe before or after an optimiser was built. Returns how many were switched.
    """
    return len(_switch_patchifying_convs(module))


@contextlib.contextmanager
def matmul_patch_embedding(module: nn.Module) -> Iterator[int]:
    """:func:`use_matmul_patch_embedding` for the duration of a ``with`` block (the evaluation attack's lever).

    On exit exactly the convolutions it switched become plain ``nn.Conv2d`` again, so a model whose
    trainer switched them already (``perf.patch_embedding_matmul``) keeps its own switch. Yields how
    many it switched.
    """
    switched = _switch_patchifying_convs(module)
    try:
        yield len(switched)
    finally:
        for sub in switched:
            sub.__class__ = nn.Conv2d


def restore_conv_patch_embedding(module: nn.Module) -> None:
    """Undo :func:`use_matmul_patch_embedding` (e.g. before handing the model to code that checks types exactly)."""
    for sub in module.modules():
        if type(sub) is MatmulPatchEmbedding:
            sub.__class__ = nn.Conv2d


__all__ = ["MatmulPatchEmbedding", "matmul_patch_embedding", "restore_conv_patch_embedding", "use_matmul_patch_embedding"]
