"""Evaluation of CLIP encoders and their saliency maps: zero-shot accuracy (clean, under PGD),
faithfulness (deletion/insertion, ROAR with retraining), localisation, complexity, sanity checks.
"""

from .base import EvalContext, EvaluationError, Metric
from .classnames import clip_templates, imagenet_classnames, resolve_classnames, resolve_templates
from .complexity import gini
from .evaluators import CNNOptions, SmallCNN
from .faithfulness import (
    LinearProbe, RoarOptions, auc, normalised_auc, perturbation_curve, pixel_ranking, remove_top, roar,
)
from .localisation import boxes_to_masks, empty_masks, energy_in_mask, pointing_game
from .metrics import METRICS
from .runner import evaluate_model, write_outputs
from .sanity import randomisation_check, randomized_copy, spearman
from .zeroshot import ZeroShotClassifier, predict, robust_accuracy, topk_accuracy

__all__ = [
    "METRICS", "CNNOptions", "EvalContext", "EvaluationError", "LinearProbe", "Metric", "RoarOptions", "SmallCNN",
    "ZeroShotClassifier", "auc",
    "boxes_to_masks", "empty_masks", "normalised_auc", "clip_templates", "energy_in_mask", "evaluate_model", "gini", "imagenet_classnames",
    "perturbation_curve", "pixel_ranking", "pointing_game", "predict", "randomisation_check", "randomized_copy",
    "remove_top", "resolve_classnames", "resolve_templates", "roar", "robust_accuracy", "spearman",
    "topk_accuracy", "write_outputs",
]

