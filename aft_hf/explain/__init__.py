"""Saliency maps for CLIP image encoders: targets (text or image similarity) and captum-based methods."""

from .methods import (
    METHODS, Explainer, SimilarityForward, attention_rollout, check_images, cls_attention, explain, postprocess,
    resolve_method,
)
from .targets import ExplainError, TemplateError, TextTower, as_target, check_template, image_targets, load_text_tower

__all__ = [
    "METHODS", "ExplainError", "Explainer", "SimilarityForward", "TemplateError", "TextTower", "as_target",
    "attention_rollout", "check_images", "check_template", "cls_attention", "explain", "image_targets",
    "load_text_tower", "postprocess", "resolve_method", "add_subcommand",
]


def add_subcommand(subparsers) -> None:
    """Register ``aft-hf explain`` (implemented in :mod:`aft_hf.explain.cli`)."""
    from .cli import add_subcommand as _add

    _add(subparsers)
