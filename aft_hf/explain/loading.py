"""Loading what an explanation or evaluation needs: the image encoders, the text tower, the device.

Shared by the ``explain`` and ``evaluate`` commands (and usable from Python), so neither command
module imports the other.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..model import FAMILIES, ImageEncoder, ModelLoadError, encoder_family, load_image_encoder, load_model_config
from ..resolution import check_image_size
from .targets import TextTower, is_full_clip, load_text_tower


def pick_device(spec: str = "auto") -> torch.device:
    """``--device``: auto, cpu, cuda, cuda:N; an unusable one is a one-line error before any loading."""
    from ..launch import resolve_device

    return resolve_device(spec)


def _projects(encoder) -> bool:
    """Whether ``encoder``'s family embeds images through a projection (CLIP) rather than its pooled output (SigLIP)."""
    family = FAMILIES.get(getattr(encoder, "family", "clip"))
    return family is None or family.projection


def embedding_width(encoder) -> tuple[Optional[int], str]:
    """(width of the embedding ``encoder`` returns, what it is); (None, "") when not a CLIP ImageEncoder.

    A CLIP tower returns ``visual_projection`` outputs (``projection_dim``; a bare ``CLIPVisionModel`` is refused
    before, :func:`_refuse_bare_clip`); a SigLIP tower its pooled output (``hidden_size``).
    """
    config = getattr(getattr(encoder, "vision", None), "config", None)
    if config is None:
        return None, ""
    if not _projects(encoder):
        return getattr(config, "hidden_size", None), f"the pooled output of a {encoder.family} tower"
    return getattr(config, "projection_dim", None), "the projected embedding"


def _refuse_bare_clip(model: str, encoder) -> None:
    """A ``CLIPVisionModel``'s pooled output is not in any text tower's space, whatever the widths: no zero-shot."""
    if _projects(encoder) and not getattr(encoder, "has_projection", True):
        raise ModelLoadError(f"model {model} is a CLIPVisionModel without visual_projection: its pooled output is "
                             "not in the text tower's embedding space, so zero-shot scores would mean nothing "
                             "(whatever the widths): use the full CLIPModel or a CLIPVisionModelWithProjection")


def text_tower_problem(model: str, encoder, source: str, text: TextTower) -> Optional[str]:
    """Why the text tower of ``source`` cannot score ``model``'s embeddings (another family, CLIP vs SigLIP, or
    another width), or None."""
    if getattr(encoder, "family", "clip") != text.family:
        return f"model {model} is a {encoder.family} model but the text tower of {source} is {text.family}'s"
    image_dim, what = embedding_width(encoder)
    if image_dim is not None and image_dim != text.dim:
        return (f"model {model} embeds images in {image_dim} dimensions but the text tower of {source} in "
                f"{text.dim} (the model's embedding: {what})")
    return None


def check_text_sources(models: Sequence[str], text_model: Optional[str]) -> None:
    """Each model's config read (a VLM or other model named as such), and a one-line error when a vision-only
    model has no ``text_model`` to build its zero-shot classifier (``text_model=""``: none is needed). Cheap: no
    weights load, so a command calls it before it writes anything."""
    for m in models:  # a VLM or other model is named as such before any text-tower advice
        encoder_family(m)
    if text_model is None:
        vision_only = [m for m in models if not is_full_clip(m)]
        if vision_only:
            raise ModelLoadError(f"no text tower for the vision-only model(s) {', '.join(vision_only)}: pass "
                                 "--text-model with the full model it came from (CLIP or SigLIP, e.g. "
                                 "openai/clip-vit-base-patch16 or google/siglip-base-patch16-224)")


def check_image_size_option(models: Sequence[str], image_size: int) -> None:
    """Refuse ``--image-size`` in one line, naming the option, when it is no positive multiple of a model's patch
    size (read from each config, before any weights load)."""
    for model in models:
        config = load_model_config(model)
        check_image_size(image_size, getattr(config, "vision_config", config).patch_size, "--image-size")


def load_models_and_texts(models: Sequence[str], text_model: Optional[str], device: torch.device,
                          need_text: bool = True,
                          image_size: Optional[int] = None) -> tuple[list[ImageEncoder], list[Optional[TextTower]],
                                                           list[Optional[str]]]:
    """Image encoders for ``models`` and, per model, its text tower and where that came from.

    Each full CLIP checkpoint uses its own text tower (models with different text towers or widths
    must not share one); ``text_model`` overrides that for every model, and is required when a
    model is vision-only. Towers are loaded once per source. Checked before any weights load.
    ``image_size`` (``--image-size``) runs every encoder at that size (:mod:`aft_hf.resolution`).
    """
    check_text_sources(models, (text_model or None) if need_text else "")
    if image_size is not None:
        check_image_size_option(models, image_size)
    encoders = [load_image_encoder(m, image_size=image_size).to(device).eval() for m in models]
    if not need_text:
        return encoders, [None] * len(models), [None] * len(models)
    for model, encoder in zip(models, encoders):  # before any text tower loads
        _refuse_bare_clip(model, encoder)
    sources = [text_model or m for m in models]
    towers: dict[str, TextTower] = {}
    for source in sources:
        if source not in towers:
            towers[source] = load_text_tower(source).to(device)
    for model, encoder, source in zip(models, encoders, sources):
        if problem := text_tower_problem(model, encoder, source, towers[source]):
            raise ModelLoadError(f"{problem}: pass a --text-model of the same family")
    return encoders, [towers[s] for s in sources], list(sources)
