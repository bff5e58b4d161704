"""The shared base of all metrics and the context they read.

Every metric is a :class:`Metric` with a ``name``, a ``family`` (accuracy, faithfulness,
localisation, complexity, sanity), a ``citation`` and ``compute(ctx) -> dict``. The
:class:`EvalContext` holds the model, the data and the zero-shot classifier, and computes each
method's maps once (cached), so several metrics share them.

Metrics score the *raw* map each method defines: |attribution| summed over the colour channels
for the gradient methods (Simple Gradient, SmoothGrad, Integrated Gradients), the ReLU'd and
upsampled Grad-CAM, the (upsampled) attention or rollout weights: no percentile clip, no min-max.
Clipping at the 99th percentile flattens the top 1% of pixels into ties (an argmax then picks by
raster order) and min-max shifts the mass that Gini and energy-in-mask measure, so the display
post-processing (:meth:`EvalContext.display_maps`) is for figures only.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explain import Explainer, postprocess
from .errors import EvaluationError  # noqa: F401  (re-exported: its historical home)
from .sharding import Shard
from .zeroshot import ZeroShotClassifier

PER_IMAGE = "per_image"
"""The key under which ``compute`` may return per-image values (lists in image order); the runner moves
them out of ``metrics`` into the report's own ``per_image`` section."""
RAW_MAP = "raw map: |attribution| summed over channels (Grad-CAM/attention as computed), no clip, no min-max"


@dataclass
class EvalContext:
    """Inputs shared by the metrics. ``images`` in [0, 1], ``labels`` class indices, ``masks`` optional."""

    encoder: nn.Module
    class_weights: Tensor
    images: Tensor
    labels: Tensor
    methods: Sequence[str] = ("saliency",)
    logit_scale: float = 100.0
    masks: Optional[Tensor] = None
    batch_size: int = 16
    seed: int = 0
    progress: bool = True
    options: dict = field(default_factory=dict)
    shard: Shard = field(default_factory=Shard)
    """This process's share of the batches under ``accelerate launch`` (metrics with ``shards`` read it)."""
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def classifier(self) -> ZeroShotClassifier:
        return ZeroShotClassifier(self.encoder, self.class_weights, self.logit_scale)

    def targets(self, labels: Optional[Tensor] = None) -> Tensor:
        """Per-image target embedding: the class embedding of the image's label."""
        labels = self.labels if labels is None else labels
        return self.class_weights[labels.to(self.class_weights.device)]

    def explainer(self, method: str, encoder: Optional[nn.Module] = None) -> Explainer:
        """An explainer that returns the raw maps the metrics score (see the module docstring)."""
        kwargs = {**self.options.get("explainer", {}), "postprocess": True, "clip_percentile": None, "minmax": False}
        return Explainer(encoder or self.encoder, method, batch_size=self.batch_size, progress=self.progress, **kwargs)

    def maps(self, method: str, images: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """Raw maps of ``method`` for the context's images (cached) or for given images."""
        if images is None:
            if method not in self._maps:
                self._maps[method] = self.explainer(method).attribute(self.images, self.targets()).cpu()
            return self._maps[method]
        return self.explainer(method).attribute(images, self.targets(labels)).cpu()

    def display_maps(self, method: str) -> Tensor:
        """The cached raw maps after the display post-processing (99th-percentile clip, min-max): figures only."""
        return postprocess(self.maps(method), absolute=True, clip_percentile=99.0, minmax=True)

    def label_probability(self, images: Tensor, labels: Tensor) -> Tensor:
        """Zero-shot softmax probability of each image's label (the deletion/insertion score)."""
        device = self.class_weights.device
        with torch.no_grad():
            logits = self.classifier(images.to(device))
        return F.softmax(logits, dim=1).gather(1, labels.to(device).view(-1, 1)).squeeze(1).cpu()


class Metric(abc.ABC):
    """Base class: subclasses set the class attributes and implement :meth:`compute`."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    consumes: ClassVar[str] = ""  # what the metric reads (e.g. the raw map), written into the report
    needs_masks: ClassVar[bool] = False
    shards: ClassVar[bool] = False
    """True when ``compute`` splits its batches over ``ctx.shard``'s processes and returns every process the
    one-process result (:mod:`aft_hf.evaluate.sharding`); the others refuse to run under several processes."""

    def __init__(self, **options):
        self.options = options

    @abc.abstractmethod
    def compute(self, ctx: EvalContext) -> dict:
        """The metric's numbers as a JSON-serialisable dict."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"
