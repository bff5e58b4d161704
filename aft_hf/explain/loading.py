"""Loading what an explanation or evaluation needs: the image encoders, the text tower, the device.

Shared by the ``explain`` and ``evaluate`` commands (and usable from Python), so neither command
module imports the other.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..model import ImageEncoder, ModelLoadError, load_image_encoder
from .targets import TextTower, is_full_clip, load_text_tower


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_models_and_text(models: Sequence[str], text_model: Optional[str], device: torch.device,
                         need_text: bool = True) -> tuple[list[ImageEncoder], Optional[TextTower], Optional[str]]:
    """Image encoders for ``models`` and the (original) text tower: ``text_model`` or the first full-CLIP model."""
    encoders = [load_image_encoder(m).to(device).eval() for m in models]
    if not need_text:
        return encoders, None, None
    source = text_model or next((m for m in models if is_full_clip(m)), None)
    if source is None:
        raise ModelLoadError("no text tower: every --model is vision-only; pass --text-model with a full CLIP "
                             "checkpoint (the original one, e.g. openai/clip-vit-base-patch16)")
    return encoders, load_text_tower(source).to(device), source
