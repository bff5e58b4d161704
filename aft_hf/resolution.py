"""Running a ViT image tower at another input size than its checkpoint's: the position embeddings are
interpolated ONCE, when the model is loaded, and the model then *is* a model of the new size.

transformers can interpolate at every forward (``interpolate_pos_encoding=True``), but a model trained
that way still says its old ``image_size`` in its config, so ``from_pretrained``, the processor and
the zero-shot pipeline would disagree with what was trained. Here the tensor itself is resized
(bicubic on the patch grid, as transformers' ``interpolate_pos_encoding`` does, so the first forward
is the same), the config's ``image_size`` and the embedding module's bookkeeping follow, and the image
processor's resize and crop sizes are scaled to match; an export then writes all three at the new size.

Works for any tower whose embeddings module has ``position_embedding`` (an ``nn.Embedding`` over
``prefix + grid**2`` positions: CLIP has one class-token position, SigLIP none).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import AftError


class ResolutionError(AftError, ValueError):
    """An input size the tower cannot take (not a multiple of its patch size, not positive)."""


def interpolate_position_embedding(weight: Tensor, old_grid: int, new_grid: int) -> Tensor:
    """(prefix + old_grid**2, D) position table -> (prefix + new_grid**2, D): the leading non-grid
    positions (a class token's) kept, the grid resized bicubically (``align_corners=False``)."""
    dim = weight.shape[-1]
    prefix = weight.shape[0] - old_grid * old_grid
    if prefix < 0:
        raise ResolutionError(f"a position table of {weight.shape[0]} rows cannot hold a {old_grid}x{old_grid} grid")
    grid = weight[prefix:].reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(weight.dtype).permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim)
    return torch.cat([weight[:prefix], grid], dim=0)


def check_image_size(image_size: int, patch_size: int, what: str = "model.image_size") -> None:
    """Refuse a size that is not a positive multiple of the patch size (the patch grid would drop pixels)."""
    if image_size <= 0 or image_size % patch_size:
        raise ResolutionError(f"{what} {image_size} is not a positive multiple of the patch size {patch_size} "
                              f"(try {max(patch_size, round(image_size / patch_size) * patch_size)})")


def resize_embeddings(embeddings: nn.Module, config: Any, image_size: int) -> bool:
    """Resize a tower's embeddings module (and its ``config``) to ``image_size`` in place.

    Returns False (nothing done) when the size is already the config's. The new table is a fresh
    parameter with the old one's ``requires_grad``, dtype and device.
    """
    check_image_size(image_size, config.patch_size)
    if image_size == config.image_size:
        return False
    old_grid, new_grid = config.image_size // config.patch_size, image_size // config.patch_size
    old = embeddings.position_embedding
    with torch.no_grad():
        table = interpolate_position_embedding(old.weight.detach(), old_grid, new_grid)
    new = nn.Embedding(table.shape[0], table.shape[1], device=table.device, dtype=table.dtype)
    with torch.no_grad():
        new.weight.copy_(table)
    new.weight.requires_grad_(old.weight.requires_grad)
    embeddings.position_embedding = new
    embeddings.image_size = image_size
    embeddings.num_patches = new_grid * new_grid
    embeddings.num_positions = table.shape[0]
    embeddings.register_buffer("position_ids", torch.arange(table.shape[0], device=table.device).expand((1, -1)),
                               persistent=False)
    config.image_size = image_size
    if getattr(embeddings, "config", None) is not None and embeddings.config is not config:
        embeddings.config.image_size = image_size
    return True


SIDES = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
"""The entries of a processor's size dicts that are lengths in pixels (scaled with the input size)."""


def _scaled(size: Any, factor: float) -> Optional[dict]:
    """A processor size dict with each set side scaled by ``factor`` (None when the size is unset)."""
    if size is None:
        return None
    items = dict(size.items()) if hasattr(size, "items") else dict(vars(size))
    return {k: (round(v * factor) if k in SIDES else v) for k, v in items.items() if v is not None}


def resize_image_processor(processor: Any, old_size: int, image_size: int) -> None:
    """Scale an image processor's ``size`` and ``crop_size`` by ``image_size / old_size`` in place, so it
    makes inputs of the new size (CLIP: shortest edge and centre crop; SigLIP: height and width)."""
    if processor is None or old_size == image_size:
        return
    factor = image_size / old_size
    for name in ("size", "crop_size"):
        value = _scaled(getattr(processor, name, None), factor)
        if value is not None:
            try:
                from transformers.image_utils import SizeDict

                setattr(processor, name, SizeDict(**value))
            except ImportError:  # older transformers keep plain dicts
                setattr(processor, name, value)
