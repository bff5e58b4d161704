"""The one result schema of every metric: :class:`MetricResult` (scalars, curves, per-image values, metadata).

A metric's ``compute`` returns a :class:`MetricResult`. Everything downstream (``report.json``'s
``results``, ``report.md``, the figures, the Hub model card, the comparison of several models, the
demo) reads these fields and never a metric's own keys, so a new metric reaches every output
without an edit elsewhere (see ``docs/metrics.md``).

- :class:`Scalar`: one number (``quantity`` at a ``setting``), with how to read it: which direction
  is better, a fraction shown as a percentage, a reference level (random map, chance) rather than a
  result of the model, and the Hub ``model-index`` metric type when it is a zero-shot classification
  result (the Hub has task types for nothing else).
- :class:`Curve`: y against x per series (deletion/insertion, ROAR); curves with the same ``figure``
  share one PNG, one panel per curve.
- ``per_image``: ``{series: {quantity: (N,) tensor}}``, in memory only (the demo's paired statistics).
- ``metadata``: the setup (attack, baseline, evaluator...), JSON-serialisable, shown under ``setup``.
- ``notes``: sentences for report.md (how to read the numbers).
- ``data``: the flat entries the metric writes into ``report.json``'s ``metrics`` (schema 1 keys,
  kept so existing readers of those keys keep working).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor


def finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


@dataclass
class Scalar:
    """One reported number: ``quantity`` (what is measured) at ``setting`` (for which method, budget...).

    ``method``/``row`` place it in report.md's table of methods (column ``method``, row ``row`` or the
    quantity); without ``method`` it is a row of the results table. ``percent``: a fraction shown as
    a percentage in report.md. ``baseline``: a reference level (random ranking, chance), never shown
    as a result of the model. ``hub_metric`` (with ``task``): the Hub ``model-index`` metric type;
    None keeps the number in the card's text only. ``setting_kind`` names the setting in model-index.
    """

    quantity: str
    value: Optional[float]
    setting: Optional[str] = None
    setting_kind: str = "setting"
    method: Optional[str] = None
    row: Optional[str] = None
    better: Optional[str] = None  # "higher", "lower" or None
    percent: bool = False
    baseline: bool = False
    hub_metric: Optional[str] = None
    task: Optional[str] = None

    @property
    def name(self) -> str:
        """The row's name in the card and the comparison: the quantity."""
        return self.quantity


@dataclass
class Curve:
    """``series[name][i]`` is the y value at ``x[i]``; ``dashed`` series are reference levels (random).

    ``figure`` names the PNG the curve is drawn in (curves of one figure become its panels);
    ``labels`` adds text to a series' legend entry (e.g. its AUC); ``x_percent`` shows x as %.
    """

    name: str
    title: str
    x: list[float]
    series: dict[str, list[Optional[float]]]
    x_label: str
    y_label: str
    figure: str
    x_percent: bool = True
    dashed: tuple[str, ...] = ("random",)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class MetricResult:
    """What one metric measured (see the module docstring)."""

    metric: str
    family: str
    scalars: list[Scalar] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    per_image: dict[str, dict[str, Tensor]] = field(default_factory=dict, repr=False)
    setup_title: str = ""
    """How the card introduces ``metadata`` ("robust accuracy under"); default: "<metric> with"."""
    seconds: Optional[float] = None
    """Wall time of the computation (``report.json``'s ``timing_s``)."""

    def to_json(self) -> dict:
        """The JSON form written under ``results[metric]`` (no ``data``: it is ``metrics``; no per-image tensors)."""
        out = {"family": self.family, "scalars": [dataclasses.asdict(s) for s in self.scalars],
               "curves": [dataclasses.asdict(c) for c in self.curves], "metadata": self.metadata,
               "notes": self.notes, "setup_title": self.setup_title}
        return finite(out)

    @classmethod
    def from_json(cls, metric: str, d: dict) -> "MetricResult":
        """The inverse of :meth:`to_json` (fields a newer writer added are ignored)."""
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            return kind(**{k: (tuple(v) if k == "dashed" else v) for k, v in values.items() if k in names})

        return cls(metric, d.get("family", ""), [build(Scalar, s) for s in d.get("scalars", [])],
                   [build(Curve, c) for c in d.get("curves", [])], d.get("metadata") or {}, list(d.get("notes") or []),
                   setup_title=d.get("setup_title") or "")

    def setup_text(self) -> str:
        """``<setup_title> k `v`, ...`` for the card's evaluation sentence ('' without metadata)."""
        if not self.metadata:
            return ""
        title = self.setup_title or f"{self.metric} with"
        return f"{title} " + ", ".join(f"{k} `{_short(v)}`" for k, v in self.metadata.items())


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v).replace("|", "\\|")


def report_results(report: dict) -> dict[str, MetricResult]:
    """The report's results by metric name: its ``results`` section, or, for a report written before it
    existed (schema 1), the registered metrics' reading of the flat ``metrics`` (see :func:`legacy_results`)."""
    if isinstance(report.get("results"), dict):
        return {k: MetricResult.from_json(k, v) for k, v in report["results"].items() if isinstance(v, dict)}
    return legacy_results(report.get("metrics") or {})


def legacy_results(metrics: dict) -> dict[str, MetricResult]:
    """Results from a schema-1 ``metrics`` dict: each registered metric presents the keys it writes
    (:meth:`Metric.present`); any other key that is a number or a mapping of numbers becomes a plain row."""
    from .metrics import METRICS

    out, used = {}, set()
    for name, cls in METRICS.items():
        if cls.keys and cls.keys[0] in metrics:
            data = {k: metrics[k] for k in cls.keys if k in metrics}
            try:
                out[name] = cls.present(data)
            except (KeyError, TypeError, ValueError, AttributeError):  # a hand-edited or truncated entry
                continue
            used.update(data)
    for key, value in metrics.items():
        if key in used:
            continue
        if _is_number(value):
            out[key] = MetricResult(key, "", [Scalar(key, value)])
        elif isinstance(value, dict) and value and all(_is_number(v) or v is None for v in value.values()):
            out[key] = MetricResult(key, "", [Scalar(key, v, str(k)) for k, v in value.items() if _is_number(v)])
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
