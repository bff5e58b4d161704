"""Training objectives: what the attack maximises and the update minimises, one registered class each.

The trainer knows no objective by name. Each step it asks the objective for ``targets`` of the clean
batch (no gradient), attacks with ``loss(outputs, targets)`` as the attack's per-sample loss, and
minimises the mean of the same loss on the adversarial images (docs/method.md#objective, docs/tecoa.md):

- ``embedding`` (AFT, the default): ||f_theta(x + delta) - f_theta0(x)||^2 against the frozen original.
- ``tecoa`` (Mao et al., ICLR 2023): CE(s * cos(f_theta(x + delta), T), y) with T the L2-normalised class
  text embeddings of the base's frozen text tower, averaged over prompt templates and computed once at
  start-up, and s the base's logit scale. Needs labels.

Adding an objective is one class::

    @register_objective
    class Cosine(Objective):
        name = "cosine"
        clean_metric = "train/clean_cosine"

        @classmethod
        def build(cls, cfg, encoder, frozen, device, services):
            return cls(frozen)

        def targets(self, images, labels=None):
            return self.frozen(images)

        def loss(self, outputs, targets):
            return 1 - F.cosine_similarity(outputs.float(), targets.float(), dim=-1)
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AftError
from .registry import Registry

# The config, the encoder and the services are passed in, not imported: the config imports this module
# (to validate ``objective``), and the text tower and class names live in layers below it.
TrainConfig = DataConfig = ImageEncoder = Any

logger = logging.getLogger(__name__)


def embedding_distance(embeds: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared L2 distance summed over the embedding dimension (the AFT loss)."""
    return (embeds.float() - targets.float()).pow(2).sum(dim=-1)


@dataclass(frozen=True)
class ObjectiveServices:
    """What an objective may need at start-up, provided by the trainer (:mod:`aft_hf.objective_setup`):
    ``text_tower(source, revision)`` -> a text tower (``class_embeddings``, ``logit_scale``, ``dim``);
    ``class_names(data_config)`` -> the training labels' class names; ``templates(name_or_file, class_names)``
    -> prompts (None: the default for those classes); ``text_tower_problem(model, encoder, source, tower)`` -> why
    that tower cannot score the encoder's embeddings (another family or width), or None."""

    text_tower: Callable[[str, Optional[str]], Any]
    class_names: Callable[[Any], list]
    templates: Callable[[Optional[str], list], list]
    text_tower_problem: Callable[[str, Any, str, Any], Optional[str]] = lambda *args: None


class ObjectiveError(AftError, ValueError):
    """An objective cannot be set up with this model or data (no labels, no text tower, ...)."""


OBJECTIVES: Registry = Registry("objective", ObjectiveError)
"""The registry: objective name -> class, in registration order (the choices of ``objective``)."""
register_objective = OBJECTIVES.register
available_objectives = OBJECTIVES.names
get_objective = OBJECTIVES.lookup


def objective_problems(cfg: TrainConfig) -> list[str]:
    """Config problems of ``cfg.objective`` (an unknown name, or what the objective itself refuses)."""
    if cfg.objective not in OBJECTIVES:
        return [f"objective: {OBJECTIVES.unknown(cfg.objective)}"]
    return OBJECTIVES[cfg.objective].config_problems(cfg)


class Objective(abc.ABC):
    """One training objective, bound to what it needs (the frozen encoder, class embeddings, ...)."""

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    """True when every training image must carry a class label (the loader then delivers ``labels``)."""
    clean_metric: ClassVar[str] = ""
    """Name of the logged loss on the clean images (``train/...``)."""
    formula: ClassVar[str] = ""
    """The objective in one line (for reports and model cards)."""
    citation: ClassVar[str] = ""
    """Where the objective comes from."""
    reads: ClassVar[tuple[str, ...]] = ()
    """Config fields only this objective reads (another objective leaves them unread: :func:`aft_hf.config.unread_fields`)."""
    num_classes: Optional[int] = None

    @classmethod
    def config_problems(cls, cfg: TrainConfig) -> list[str]:
        """What this objective refuses in a config, one line each (checked with the rest of the config)."""
        return []

    @classmethod
    @abc.abstractmethod
    def build(cls, cfg: TrainConfig, encoder: ImageEncoder, frozen: ImageEncoder, device: torch.device,
              services: ObjectiveServices) -> "Objective":
        """The objective for a run, built once at start-up (before the data loader)."""

    @abc.abstractmethod
    def targets(self, images: Tensor, labels: Optional[Tensor] = None) -> Any:
        """What ``loss`` compares with, from the clean batch (called under ``torch.no_grad``)."""

    @abc.abstractmethod
    def loss(self, outputs: Tensor, targets: Any) -> Tensor:
        """Per-sample loss (B,) of the encoder's ``outputs``: the attack ascends it, the update descends its mean."""

    def loader_options(self, data: DataConfig) -> dict:
        """Keyword arguments of :func:`aft_hf.data.build_dataloader` (the label column when labels are needed)."""
        return {"label_column": data.label_column, "num_classes": self.num_classes} if self.needs_labels else {}


@register_objective
class EmbeddingObjective(Objective):
    """AFT: squared distance of the embedding to the frozen original's embedding of the clean image."""

    name = "embedding"
    clean_metric = "train/clean_distance"
    formula = ("min_theta E_x ||g(f_theta(x + delta*)) - g(f_theta0(x))||^2, "
               "delta* = argmax_delta ||g(f_theta(x + delta)) - g(f_theta0(x))||^2 - R(delta)")
    citation = "Schlarmann et al., Robust CLIP (FARE), ICML 2024; Gong et al., AFT, ICLR 2025"

    def __init__(self, frozen: ImageEncoder):
        self.frozen = frozen

    @classmethod
    def build(cls, cfg, encoder, frozen, device, services) -> "EmbeddingObjective":
        return cls(frozen)

    def targets(self, images: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.frozen(images)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return embedding_distance(outputs, targets)


@register_objective
class TecoaObjective(Objective):
    """TeCoA: cross-entropy of the zero-shot logits ``s * cos(f(x), T)`` with the true class (Mao et al. 2023).

    ``class_weights`` (C, D) are the L2-normalised class text embeddings, fixed for the whole run.
    """

    name = "tecoa"
    needs_labels = True
    reads = ("model.text_model", "data.class_names", "data.templates", "data.label_column")
    clean_metric = "train/clean_cross_entropy"
    formula = ("min_theta E_(x,y) CE(s * cos(f_theta(x + delta*), T), y), "
               "delta* = argmax_delta CE(s * cos(f_theta(x + delta), T), y)")
    citation = ("Mao et al., Understanding Zero-Shot Adversarial Robustness for Large-Scale Models (TeCoA), "
                "ICLR 2023")

    def __init__(self, class_weights: Tensor, logit_scale: float, class_names: Optional[list[str]] = None):
        self.class_weights = F.normalize(class_weights.detach().float(), dim=-1)
        self.logit_scale = float(logit_scale)
        self.class_names = class_names
        self.num_classes = self.class_weights.shape[0]

    @classmethod
    def config_problems(cls, cfg: TrainConfig) -> list[str]:
        p = []
        if cfg.model.embedding != "pooled":
            p.append("objective tecoa needs model.embedding: pooled (zero-shot logits use the projected embedding)")
        if not cfg.data.label_column:
            p.append("data.label_column: objective tecoa needs the column of class labels")
        return p

    @classmethod
    def build(cls, cfg, encoder, frozen, device, services) -> "TecoaObjective":
        m = cfg.model
        if not m.text_model and not encoder.base_is_full_clip:
            raise ObjectiveError(f"objective tecoa needs a text tower: '{m.name_or_path}' is vision-only; set "
                                 "model.text_model to a full CLIP checkpoint (the original, e.g. "
                                 "openai/clip-vit-base-patch16)")
        if not encoder.has_projection:
            raise ObjectiveError(f"objective tecoa needs a projected image embedding: '{m.name_or_path}' is a bare "
                                 "CLIPVisionModel without visual_projection")
        names = services.class_names(cfg.data)
        templates = services.templates(cfg.data.templates, names)
        source = m.text_model or m.name_or_path
        text = services.text_tower(source, None if m.text_model else m.revision).to(device)
        problem = services.text_tower_problem(f"'{m.name_or_path}'", encoder, f"'{source}'", text)
        if problem:
            raise ObjectiveError(f"objective tecoa: {problem}; set model.text_model to the full model it came from")
        weights = text.class_embeddings(names, templates)
        logger.info("tecoa: %d classes x %d templates from the text tower of %s, logit scale %.4g",
                    len(names), len(templates), source, text.logit_scale)
        return cls(weights, text.logit_scale, names)

    def targets(self, images: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        if labels is None:
            raise ObjectiveError("objective tecoa needs the labels of every batch (data.label_column)")
        return labels

    def logits(self, outputs: Tensor) -> Tensor:
        """Zero-shot logits (B, C): logit scale x cosine of the image embeddings and the class embeddings."""
        weights = self.class_weights.to(outputs.device)
        return self.logit_scale * F.normalize(outputs.float(), dim=-1) @ weights.T

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(outputs), targets.to(outputs.device), reduction="none")
