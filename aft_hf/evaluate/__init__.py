"""Evaluation of CLIP encoders and their saliency maps: zero-shot accuracy (clean, under APGD or PGD),
faithfulness (deletion/insertion, ROAR with retraining), localisation, complexity, sanity checks.

Metrics follow one contract (typed options, one result schema): see ``docs/metrics.md``.
"""

from ..results import Curve, MetricResult, Scalar, report_results
from .base import EvalContext, EvaluationError, Metric
from .classnames import clip_templates, imagenet_classnames, resolve_classnames, resolve_templates
from .complexity import gini
from .evaluators import CNNOptions, SmallCNN
from .faithfulness import (
    LinearProbe,
    RoarOptions,
    auc,
    normalised_auc,
    perturbation_curve,
    pixel_ranking,
    remove_top,
    roar,
)
from .localisation import boxes_to_masks, empty_masks, energy_in_mask, pointing_game
from .metrics import METRICS, RobustOptions
from .runner import evaluate_model, run_metrics, write_outputs
from .sanity import randomisation_check, randomized_copy, spearman
from .zeroshot import (
    ZeroShotClassifier,
    check_labels,
    label_indices,
    predict,
    robust_accuracy,
    topk_accuracy,
    zero_shot_accuracy,
)

__all__ = [
    "METRICS", "CNNOptions", "Curve", "EvalContext", "EvaluationError", "LinearProbe", "Metric", "MetricResult",
    "RoarOptions", "RobustOptions", "Scalar", "SmallCNN", "ZeroShotClassifier", "auc", "check_labels", "label_indices",
    "report_results",
    "run_metrics", "zero_shot_accuracy",
    "boxes_to_masks", "empty_masks", "normalised_auc", "clip_templates", "energy_in_mask", "evaluate_model", "gini",
    "imagenet_classnames",
    "perturbation_curve", "pixel_ranking", "pointing_game", "predict", "randomisation_check", "randomized_copy",
    "remove_top", "resolve_classnames", "resolve_templates", "roar", "robust_accuracy", "spearman",
    "topk_accuracy", "write_outputs",
]

