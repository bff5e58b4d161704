"""The one result schema of every metric: :class:`MetricResult` (scalars, curves, per-image values, metadata),
and the flat layouts of the package's own metrics in ``report.json``'s ``metrics``.

It lives below every other layer: the metrics (:mod:`aft_hf.evaluate`) produce it, and the model card
(:mod:`aft_hf.card`, a layer above evaluate) reads it.

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

:data:`FLAT_LAYOUTS` says how the package's metrics present their flat entries (the built-in
metrics' ``present``), which is also how a report written before ``results`` existed is read
(:func:`report_results`). A new metric builds its :class:`MetricResult` itself and needs no entry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from torch import Tensor

from .threat_models import DEFAULT_NORM, norm_label


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
    sd: Optional[float] = None
    """The spread of ``value`` over repeats (sample sd, e.g. ROAR's evaluator seeds): report.md shows ``± sd``."""

    @property
    def name(self) -> str:
        """The row's name in the card and the comparison: the quantity."""
        return self.quantity


@dataclass
class Curve:
    """``series[name][i]`` is the y value at ``x[i]``; ``dashed`` series are reference levels (random).

    ``figure`` names the PNG the curve is drawn in (curves of one figure become its panels);
    ``labels`` adds text to a series' legend entry (e.g. its AUC); ``x_percent`` shows x as %;
    ``spread`` is drawn as a band; a curve with ``absent`` set is named in its panel, not drawn.
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
    spread: dict[str, list[Optional[float]]] = field(default_factory=dict)
    """A series' sd at each x over repeats (ROAR's evaluator seeds), drawn as a band around it."""
    absent: str = ""
    """Why the curve has no series (ROAR below its floor): the panel names the model and says it instead."""


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
    verdicts: dict = field(default_factory=dict, repr=False)
    """Per-image results written to ``report.json``'s ``per_image`` (lists in image order: predictions,
    robust verdicts), so that runs can be compared image by image (one process against several)."""
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


# --------------------------------------------------------------------------- the package's flat layouts

ZS_TASK = "Zero-shot classification"


def _robust_name(attack: dict) -> Optional[str]:
    """``APGD-CE+APGD-T, L-inf`` from ``robust_attack``; reports without a name were made with PGD."""
    if not isinstance(attack, dict) or not attack:
        return None
    if attack.get("name"):
        return str(attack["name"])
    norm = norm_label(attack.get("norm", DEFAULT_NORM))
    return f"PGD-{attack['steps']}, {norm}" if attack.get("steps") else f"PGD, {norm}"


def _empty_note(data: dict) -> list[str]:
    n = data.get("n_empty_masks")
    return [] if n is None else [f"Localisation skips images whose mask is empty: {n} here."]


def _zeroshot(data: dict) -> MetricResult:
    scalars = [Scalar(f"Zero-shot top-{k} accuracy", data.get(f"zeroshot_top{k}"), better="higher", percent=True,
                      hub_metric="accuracy" if k == 1 else "top_5_accuracy", task=ZS_TASK)
               for k in (1, 5) if f"zeroshot_top{k}" in data]
    notes = ["Top-5 is n/a with fewer than 5 classes."] if "zeroshot_top5" in data and \
        data["zeroshot_top5"] is None else []
    return MetricResult("", "", scalars, notes=notes)


def _robust(data: dict) -> MetricResult:
    attack = data.get("robust_attack") or {}
    name = _robust_name(attack)
    quantity = "Robust zero-shot top-1 accuracy" + (f" ({name})" if name else "")
    scalars = [Scalar(quantity, v, str(e), "eps", better="higher", percent=True, hub_metric="robust_accuracy",
                      task="Adversarial robustness") for e, v in (data.get("robust_top1") or {}).items()]
    notes = []
    if attack:
        extra = f", {attack.get('restarts', 1)} restart(s), {attack['targets']} target classes" if "targets" in attack \
            else ""
        iterations = attack.get("steps", attack.get("iterations"))
        how = "".join(f"; {text}" for key, text in (
            ("precision", f"forward passes under {attack.get('precision')} autocast (its rounding can flip a "
                          "verdict at a near-tie)"),
            ("compiled", "forward compiled with torch.compile")) if attack.get(key))
        name = str(attack.get("name", "PGD, L-inf"))
        said = name.endswith(" iterations") or name.startswith(f"PGD-{iterations},")  # a weaker APGD's, PGD-10's
        name += "" if said else f", {iterations} iterations"
        notes.append(f"Attack: {name}{extra}{how}; an "
                     "image counts as robust only when correct clean and every attack fails, at this and every "
                     "smaller budget.")
    return MetricResult("", "", scalars, metadata=dict(attack), notes=notes,
                        setup_title="robust accuracy under")


PERTURBATION_BETTER: dict[tuple[str, str], str] = {
    ("deletion", "most"): "lower",  # MoRF: a faithful map makes the score fall fast
    ("insertion", "most"): "higher",  # MoRF: the score rises fast
    ("deletion", "least"): "higher",  # LeRF: the unimportant pixels go first, the score stays up
    ("insertion", "least"): "lower",  # LeRF: the unimportant pixels come first, the score stays down
}
"""(mode, order) -> which AUC a faithful map gives: the one place report.md, report.json and the figures read."""


def perturbation_better(mode: str, order: Optional[str]) -> str:
    """"lower" or "higher": the faithful direction of a deletion/insertion AUC perturbed ``order``-relevant first
    (a report without ``order`` was made most-relevant first)."""
    return PERTURBATION_BETTER[(mode, order or "most")]


def _perturbation(mode: str, data: dict) -> MetricResult:
    d = data[mode]
    methods = d.get("methods") or {}
    better = perturbation_better(mode, d.get("order"))
    prob = d.get("clean_probability")
    first = {"most": ", most relevant first", "least": ", least relevant first"}.get(d.get("order"), "")
    lerf = first if d.get("order") == "least" else ""  # MoRF, the usual reading, is not repeated in every row
    # (the figure says the order in its x label)
    row = (f"{mode} AUC{lerf} ({better} better), / clean prob. {'n/a' if prob is None else f'{prob:.3f}'}, "
           f"baseline {d.get('baseline', 'mean')}")
    scalars = [Scalar(f"{mode.capitalize()} AUC", v.get("auc"), m, "method", m, row, better,
                      baseline=m == "random") for m, v in methods.items() if isinstance(v, dict)]
    ahead = "negative" if better == "lower" else "positive"
    scalars += [Scalar(f"{mode.capitalize()} AUC minus random", v["auc_minus_random"], m, "method", m,
                       f"{mode} AUC{lerf} minus random ({ahead} = better than random)", better)
                for m, v in methods.items() if isinstance(v, dict) and "auc_minus_random" in v]
    curves = []
    if d.get("fractions") and all(isinstance(v, dict) and "curve" in v for v in methods.values()):
        curves.append(Curve(
            mode, f"{mode} ({better} AUC = better)", list(d["fractions"]),
            {m: v["curve"] for m, v in methods.items()},
            f"pixels {'removed' if mode == 'deletion' else 'inserted'} (%){first}",
            "label probability / model's clean probability" if prob is not None
            else "zero-shot probability of the label", "deletion_insertion",
            labels={m: f"AUC {v['auc']:.3f}" for m, v in methods.items() if isinstance(v.get("auc"), float)}))
    metadata = {k: d[k] for k in ("order", "baseline", "clean_probability") if k in d}
    return MetricResult("", "", scalars, curves, metadata)


def sample_sd(values) -> Optional[float]:
    """Sample standard deviation (``None`` for fewer than two values: there is no spread to show)."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def roar_evaluator_text(result: dict) -> str:
    """"evaluator accuracy on intact images 0.234 ± 0.106 over 2 evaluator seeds (floor 0.80)": what every ROAR
    curve is shown beside (``result``: the ``roar`` entry of ``report.json``'s ``metrics``)."""
    if result.get("intact_accuracy") is None:
        return "evaluator accuracy on intact images not recorded"
    seeds = result.get("intact_accuracy_per_seed") or []
    sd = sample_sd(seeds)
    spread = f" ± {sd:.3f} over {len(seeds)} evaluator seeds" if sd is not None else ""
    floor = f" (floor {result['floor']:.2f})" if result.get("floor") is not None else ""
    return f"evaluator accuracy on intact images {result['intact_accuracy']:.3f}{spread}{floor}"


def _roar_intact(r: dict) -> list[Scalar]:
    """The evaluator's accuracy on intact images: a reference level (``baseline``) for the CNN evaluator, which is
    trained on the same intact images whatever the model (it describes the data, not the model); the linear
    probe reads the model's own embeddings."""
    if r.get("intact_accuracy") is None:
        return []
    cnn = r.get("evaluator_kind", "cnn" if "CNN" in str(r.get("evaluator", "")) else None) == "cnn"
    return [Scalar("ROAR evaluator accuracy on intact images", r["intact_accuracy"], None, "setting", None,
                   "ROAR evaluator, intact images", "higher", True, baseline=cnn,
                   sd=sample_sd(r.get("intact_accuracy_per_seed") or []))]


def _roar(data: dict) -> MetricResult:
    r = data["roar"]
    evaluator = str(r.get("evaluator", ""))
    split = r.get("split") or {}
    about = f"ROAR evaluator: {evaluator}; train/test {split.get('train')}/{split.get('test')}."
    seen = f"ROAR {roar_evaluator_text(r)}."
    intact = _roar_intact(r)
    kind = "CNN" if "CNN" in evaluator else "linear probe" if "probe" in evaluator else "evaluator"
    sd = next(iter(s.sd for s in intact), None)
    ylabel = f"test accuracy (retrained {kind}" + (
        f", intact {r['intact_accuracy']:.2f}{'' if sd is None else f' ± {sd:.2f}'})" if intact else ")")
    if r.get("below_floor"):  # an evaluator that cannot read intact images: its curve would be noise
        why = r.get("skipped", "the evaluator is below the floor")
        return MetricResult("", "", intact, [Curve("roar", "ROAR (lower = more faithful)", list(r.get("fractions") or []),
                                                   {}, "pixels removed and retrained (%)", ylabel, "roar",
                                                   absent=f"no curve: {why}")],
                            notes=[about, seen + f" **Not a result:** {why}; no curve is drawn."])
    if "accuracy" not in r:
        return MetricResult("", "", notes=[f"ROAR skipped: {r.get('skipped', 'no result')}."])
    fractions = list(r.get("fractions") or [])
    spread = {m: list(v) for m, v in (r.get("accuracy_sd") or {}).items() if any(x is not None for x in v or [])}
    scalars = intact + [Scalar("ROAR accuracy (evaluator retrained)", a, f"{m} @ {f:g}", "method @ fraction removed",
                               m, f"ROAR accuracy, {100 * f:.0f}% removed", "lower", True, baseline=m == "random",
                               sd=(spread.get(m) or [None] * len(curve))[i])
                        for m, curve in r["accuracy"].items() for i, (f, a) in enumerate(zip(fractions, curve or []))]
    curves = [Curve("roar", "ROAR (lower = more faithful)", fractions, dict(r["accuracy"]),
                    "pixels removed and retrained (%)", ylabel, "roar", spread=spread)]
    metadata = {"evaluator": evaluator, **{f"{k}_images": v for k, v in split.items()}}
    return MetricResult("", "", scalars, curves, metadata, [about, seen])


def _pointing(data: dict) -> MetricResult:
    scalars = [Scalar("Pointing game", v, f"{m}, {k}", "method", m, f"pointing game {k}", "higher", True)
               for m, d in data["pointing_game"].items() for k, v in d.items()]
    return MetricResult("", "", scalars, notes=_empty_note(data),
                        metadata={k: data[k] for k in ("n_empty_masks",) if k in data})


def _energy(data: dict) -> MetricResult:
    e = data["energy_in_mask"]
    scalars = [Scalar("Energy in mask", d.get("energy"), m, "method", m, "energy in mask",
                      percent=True) for m, d in e.items()]
    chance = next((d["chance"] for d in e.values() if "chance" in d), None)  # the mask's area: one per image set
    if chance is not None:
        scalars.append(Scalar("Energy in mask", chance, "chance", "method", "chance", "energy in mask",
                              percent=True, baseline=True))
    return MetricResult("", "", scalars, notes=_empty_note(data),
                        metadata={k: data[k] for k in ("n_empty_masks",) if k in data})


def _gini(data: dict) -> MetricResult:
    return MetricResult("", "", [
        Scalar("Gini sparseness of the map", v, m, "method", m, "Gini sparseness (higher = sparser)")
        for m, v in data["gini"].items()])


def _randomisation(data: dict) -> MetricResult:
    undefined = {m: n for m, n in (data.get("randomisation_undefined") or {}).items() if n}
    notes = [("Spearman vs randomised model: undefined where a map is constant (no rank order), so those images "
              "are left out of the mean: " + ", ".join(f"{m} {n}" for m, n in undefined.items()) + ".")] \
        if undefined else []
    return MetricResult("", "", [
        Scalar("Spearman correlation after weight randomisation", v, m, "method", m,
               "Spearman vs randomised model (lower better)", "lower")
        for m, v in data["randomisation_spearman"].items()], notes=notes,
        metadata={"undefined_images": undefined} if undefined else {})


@dataclass(frozen=True)
class FlatLayout:
    """How one of the package's metrics writes ``report.json``'s flat ``metrics`` (``keys``) and shows them."""

    metric: str
    family: str
    keys: tuple[str, ...]
    show: Callable[[dict], MetricResult]

    def present(self, data: dict) -> MetricResult:
        """The metric's result from its flat entries."""
        return replace(self.show(data), metric=self.metric, family=self.family, data=data)


FLAT_LAYOUTS: dict[str, FlatLayout] = {layout.metric: layout for layout in (
    FlatLayout("zeroshot", "accuracy", ("zeroshot_top1", "zeroshot_top5"), _zeroshot),
    FlatLayout("robust", "accuracy", ("robust_top1", "robust_attack"), _robust),
    FlatLayout("deletion", "faithfulness", ("deletion",), lambda data: _perturbation("deletion", data)),
    FlatLayout("insertion", "faithfulness", ("insertion",), lambda data: _perturbation("insertion", data)),
    FlatLayout("roar", "faithfulness", ("roar",), _roar),
    FlatLayout("pointing", "localisation", ("pointing_game", "n_empty_masks"), _pointing),
    FlatLayout("energy", "localisation", ("energy_in_mask", "n_empty_masks"), _energy),
    FlatLayout("gini", "complexity", ("gini",), _gini),
    FlatLayout("randomisation", "sanity", ("randomisation_spearman", "randomisation_undefined"), _randomisation),
)}
"""Metric name -> its flat layout (the registered metrics of :mod:`aft_hf.evaluate.metrics` point here)."""


def report_results(report: dict) -> dict[str, MetricResult]:
    """The report's results by metric name: its ``results`` section, or, for a report written before it
    existed, its flat ``metrics`` read through :data:`FLAT_LAYOUTS` (see :func:`legacy_results`)."""
    if isinstance(report.get("results"), dict):
        return {k: MetricResult.from_json(k, v) for k, v in report["results"].items() if isinstance(v, dict)}
    return legacy_results(report.get("metrics") or {})


def legacy_results(metrics: dict) -> dict[str, MetricResult]:
    """Results from a flat ``metrics`` dict: each layout presents the keys it owns; any other key that is a
    number or a mapping of numbers becomes a plain row (other structures are left out, not guessed at)."""
    out, used = {}, set()
    for name, layout in FLAT_LAYOUTS.items():
        if layout.keys[0] in metrics:
            data = {k: metrics[k] for k in layout.keys if k in metrics}
            try:
                out[name] = layout.present(data)
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
