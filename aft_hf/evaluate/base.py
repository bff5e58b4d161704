"""The shared base of all metrics and the context they read.

Every metric is a :class:`Metric` with a ``name`` (its registry name, the key of its entry in
``report.json``'s ``results``), a ``family`` (accuracy, faithfulness, localisation, complexity,
sanity), a ``citation``, typed options (an ``Options`` dataclass: an unknown option is refused
naming the metric and its options) and ``compute(ctx) -> MetricResult`` (the one result schema,
:mod:`aft_hf.results`). The :class:`EvalContext` holds the model, the data and the
zero-shot classifier, and computes each method's maps once (cached), so several metrics share them.
How to add a metric: ``docs/metrics.md``.

Metrics score the *raw* map each method defines: |attribution| summed over the colour channels
for the gradient methods (Simple Gradient, SmoothGrad, Integrated Gradients), the ReLU'd and
upsampled Grad-CAM, the (upsampled) attention or rollout weights: no percentile clip, no min-max.
Clipping at the 99th percentile flattens the top 1% of pixels into ties (an argmax then picks by
raster order) and min-max shifts the mass that Gini and energy-in-mask measure, so the display
post-processing (:meth:`EvalContext.display_maps`) is for figures only.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explain import Explainer, postprocess
from ..results import FlatLayout, MetricResult, Scalar
from .errors import EvaluationError  # noqa: F401  (re-exported: its historical home)
from .sharding import Shard
from .zeroshot import ZeroShotClassifier

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
    explainer_options: dict = field(default_factory=dict)
    """Keyword arguments of every :class:`~aft_hf.explain.Explainer` the metrics use (e.g. ``layer``)."""
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
        kwargs = {**self.explainer_options, "postprocess": True, "clip_percentile": None, "minmax": False}
        return Explainer(encoder or self.encoder, method, batch_size=self.batch_size, progress=self.progress, **kwargs)

    def maps(self, method: str, images: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """Raw maps of ``method`` for the context's images (cached) or for given images."""
        if images is None:
            if method not in self._maps:
                self._maps[method] = self.explainer(method).attribute(self.images, self.targets()).cpu()
            return self._maps[method]
        return self.explainer(method).attribute(images, self.targets(labels)).cpu()

    def display_maps(self, method: str, count: Optional[int] = None) -> Tensor:
        """The raw maps of the first ``count`` images (all: None) after the display post-processing
        (99th-percentile clip, min-max): figures only. Maps a metric computed are reused; otherwise only those
        ``count`` images are explained (a figure of 4 examples must not explain 5000 images)."""
        if method in self._maps or count is None or count >= len(self.images):
            raw = self.maps(method)[:count]
        else:
            raw = self.maps(method, self.images[:count], self.labels[:count])
        return postprocess(raw, absolute=True, clip_percentile=99.0, minmax=True)

    def label_probability(self, images: Tensor, labels: Tensor) -> Tensor:
        """Zero-shot softmax probability of each image's label (the deletion/insertion score)."""
        device = self.class_weights.device
        with torch.no_grad():
            logits = self.classifier(images.to(device))
        return F.softmax(logits, dim=1).gather(1, labels.to(device).view(-1, 1)).squeeze(1).cpu()


@dataclass(frozen=True)
class NoOptions:
    """The options of a metric that takes none."""


class Metric(abc.ABC):
    """Base class: subclasses set the class attributes, an ``Options`` dataclass, and :meth:`compute`.

    ``Metric(**options)`` builds ``self.options = Options(**options)``; a name ``Options`` does not
    declare is refused (:class:`EvaluationError` naming the metric and its options), so a misspelt
    option cannot be ignored silently. The package's metrics compute their flat entries of
    ``report.json``'s ``metrics`` and turn them into a :class:`MetricResult` through their ``layout``
    (:data:`aft_hf.results.FLAT_LAYOUTS`, also how a report written before ``results`` is read); a new
    metric may instead build its :class:`MetricResult` in :meth:`compute` directly.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    consumes: ClassVar[str] = ""  # what the metric reads (e.g. the raw map), written into the report
    needs_masks: ClassVar[bool] = False
    layout: ClassVar[Optional[FlatLayout]] = None
    Options: ClassVar[type] = NoOptions
    shards: ClassVar[bool] = False
    """True when ``compute`` splits its batches over ``ctx.shard``'s processes and returns every process the
    one-process result (:mod:`aft_hf.evaluate.sharding`); the others refuse to run under several processes."""

    def __init__(self, **options: Any) -> None:
        valid = [f.name for f in dataclasses.fields(self.Options)]
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise EvaluationError(f"metric '{self.name}' has no option {', '.join(repr(k) for k in unknown)} "
                                  f"(its options: {', '.join(valid) or 'none'})")
        try:
            self.options = self.Options(**options)
        except (TypeError, ValueError) as e:
            raise EvaluationError(f"metric '{self.name}': {e}") from None

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @abc.abstractmethod
    def compute(self, ctx: EvalContext) -> MetricResult:
        """What the metric measured, in the one result schema."""

    @classmethod
    def present(cls, data: dict) -> MetricResult:
        """A result from the metric's flat ``data``: through its ``layout``, else each number (or mapping of
        numbers) as a row."""
        if cls.layout is not None:
            return cls.layout.present(data)
        scalars = []
        for key, value in data.items():
            if isinstance(value, dict):
                scalars += [Scalar(key, v, str(k)) for k, v in value.items() if isinstance(v, (int, float))]
            elif isinstance(value, (int, float)):
                scalars.append(Scalar(key, value))
        return MetricResult(cls.name, cls.family, scalars, data=data)

    def result(self, data: dict, per_image: Optional[dict] = None) -> MetricResult:
        """:meth:`present` of ``data`` with the per-image values attached."""
        out = self.present(data)
        out.data, out.per_image = data, per_image or {}
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"
