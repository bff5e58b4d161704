"""Saliency maps for CLIP image encoders: targets (text or image similarity) and captum-based methods.

The ``aft-hf explain`` command lives in :mod:`aft_hf.commands.explain`; new methods go in
:mod:`aft_hf.explain.methods` (one registered class each, see :mod:`aft_hf.explain.base`).
"""

from .base import AttributionMethod, available_methods, method_label, postprocess, register_method
from .methods import (
    METHODS,
    Explainer,
    SimilarityForward,
    attention_rollout,
    check_images,
    cls_attention,
    explain,
    resolve_method,
)
from .targets import ExplainError, TemplateError, TextTower, as_target, check_template, image_targets, load_text_tower

__all__ = [
    "METHODS", "AttributionMethod", "ExplainError", "Explainer", "SimilarityForward", "TemplateError", "TextTower",
    "as_target", "attention_rollout", "available_methods", "check_images", "check_template", "cls_attention",
    "explain", "image_targets", "load_text_tower", "method_label", "postprocess", "register_method", "resolve_method",
]
