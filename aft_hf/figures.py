"""Figures (matplotlib, PNG): attribution grids with overlays, and any metric's curves (deletion/insertion, ROAR).

Images in aft_hf are pixels in [0, 1] and are shown as they are. Images that went through a CLIP
processor (``pixel_values``) must be un-normalised with CLIP's mean/std, not ImageNet's
(docs/method.md#traps): pass ``normalized=True`` or call :func:`unnormalize`.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: saving
a PNG needs no backend at all, so importing this module never selects one (forcing ``Agg`` here
would break inline plots in a notebook that imports aft_hf) and nothing opens a window.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import fill
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from matplotlib.figure import Figure
from torch import Tensor

from .constants import CLIP_MEAN, CLIP_STD


def unnormalize(pixel_values: Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> Tensor:
    """CLIP-normalised ``pixel_values`` (B, 3, H, W) back to [0, 1] pixels for display."""
    m = torch.tensor(mean, dtype=pixel_values.dtype, device=pixel_values.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixel_values.dtype, device=pixel_values.device).view(1, -1, 1, 1)
    return (pixel_values * s + m).clamp(0, 1)


def _save(fig, out: Union[str, Path]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # a Figure without pyplot: the Agg canvas, no backend
    return out


SIGNED_CMAP = "RdBu_r"
"""Colour map of signed maps (negative blue, zero white, positive red), symmetric about 0."""

Column = tuple[str, Tensor, Optional[Tensor]]
"""One grid column: (title, the (B, 3, H, W) images drawn, the (B, 1, H, W) map over them or None for the image)."""


def grid_columns(images: Union[Tensor, Mapping[str, Tensor]], maps: Mapping[str, Any]) -> list[Column]:
    """The columns of :func:`attribution_grid`: one image column, then every map over it; or, with
    ``images`` = {group: images} and ``maps`` = {group: {name: map}}, per group its own image column
    followed by that group's maps drawn over *its* images (models that prepare images differently)."""
    if torch.is_tensor(images):
        return [("image", images, None), *((key, images, m) for key, m in maps.items())]
    columns: list[Column] = []
    for group, view in images.items():
        columns.append((f"{group}: image", view, None))
        columns += [(f"{group} / {name}", view, m) for name, m in maps.get(group, {}).items()]
    return columns


def overlay_style(heat: Tensor, signed: bool, cmap: str) -> dict:
    """``imshow`` colour settings of one map: from 0 to its maximum, or (``signed``, a map with negative
    values) a diverging colour map symmetric about 0 at its largest |value|, so negative attributions show."""
    if signed:
        top = max(float(heat.abs().max()), 1e-12)
        return {"cmap": SIGNED_CMAP, "vmin": -top, "vmax": top}
    return {"cmap": cmap, "vmin": 0.0, "vmax": max(float(heat.max()), 1e-12)}


def attribution_grid(images: Union[Tensor, Mapping[str, Tensor]], maps: Mapping[str, Any], out: Union[str, Path],
                     row_titles: Optional[Sequence[str]] = None, normalized: bool = False,
                     alpha: float = 0.5, cmap: str = "jet", cell: float = 2.0,
                     plain: Sequence[str] = (), title: Optional[str] = None) -> Path:
    """Rows = images; columns = the image, then one overlay per ``maps`` key (e.g. "model / method").

    ``maps[key]`` is (B, 1, H, W) (post-processed maps in [0, 1], drawn from 0 to each map's maximum; a
    map with negative values, a raw signed map, is drawn with a diverging colour map symmetric about 0);
    ``images`` (B, 3, H, W). Keys in ``plain`` (e.g. a ground-truth mask) are drawn in grey on their own,
    not overlaid. Models that see an image differently (CLIP's centre crop, SigLIP's squash) each need their
    own image: pass ``images`` = {group: images} and ``maps`` = {group: {name: map}} (see :func:`grid_columns`).
    ``title``: a line above the grid (e.g. what the maps explain).
    """
    columns = grid_columns(images, maps)
    rows, cols = columns[0][1].shape[0], len(columns)
    fig = Figure(figsize=(cell * cols, cell * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    drawn = set()
    for c, (key, view, m) in enumerate(columns):
        imgs = unnormalize(view) if normalized else view.clamp(0, 1)
        imgs = imgs.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        signed = m is not None and key not in plain and bool(m.min() < 0)
        for r in range(rows):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if m is not None and key in plain:
                ax.imshow(m[r, 0].detach().float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
                continue
            ax.imshow(imgs[r])
            if m is not None:
                heat = m[r, 0].detach().float().cpu()
                ax.imshow(heat.numpy(), alpha=alpha, **overlay_style(heat, signed, cmap))
                drawn.add(signed)
        axes[0, c].set_title(f"{key}\n(signed)" if signed else key, fontsize=9 if m is None else 8)
    for r in range(rows):
        axes[r, 0].set_ylabel(row_titles[r] if row_titles else f"image {r}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for i, signed in enumerate(sorted(drawn)):
        _overlay_colorbar(fig, SIGNED_CMAP if signed else cmap, cell * rows, signed, slot=(i, len(drawn)))
    return _save(fig, out)


def _overlay_colorbar(fig, cmap: str, height_in: float, signed: bool = False, slot: tuple[int, int] = (0, 1)) -> None:
    """A horizontal colour bar under the grid (a fixed 0.12 in high, 0.35 in below it, whatever the
    number of rows): what the overlay colours mean. Each map is drawn from 0 to its own maximum, or
    (``signed``) from minus to plus its own largest |value|. ``slot``: (index, count) of bars side by side."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    index, count = slot
    width = 0.5 if count == 1 else 0.4
    left = 0.25 if count == 1 else 0.05 + 0.5 * index
    ax = fig.add_axes((left, -0.47 / height_in, width, 0.12 / height_in))
    norm = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
    bar = fig.colorbar(ScalarMappable(norm, cmap=cmap), cax=ax, orientation="horizontal")
    bar.set_label("signed relevance (0 is white; each map symmetric about 0 at its largest |value|)" if signed
                  else "relevance (each map scaled from 0 to its own maximum)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def metric_curves(curves: Mapping[str, Sequence], out: Union[str, Path]) -> Path:
    """One panel per curve name, every model's series in it: ``curves`` = {model label: [Curve]}.

    ``Curve`` is :class:`aft_hf.results.Curve` (deletion/insertion, ROAR, any metric's curve);
    its ``dashed`` series (the random ranking) are drawn dashed, ``labels`` extend a series' legend entry,
    ``spread`` (sd over repeats) is a band around its series. A curve with ``absent`` set (ROAR below its
    floor) is not drawn: the panel names the model and says why. Series are named by their method's
    display label (``method_label``: "Integrated Gradients"). Models whose y labels differ (each ROAR
    evaluator's intact accuracy) each get a line of the axis label.
    """
    names: list[str] = []
    for items in curves.values():
        names += [c.name for c in items if c.name not in names]
    fig = Figure(figsize=(5 * max(len(names), 1), 3.6))
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)
    for ax, name in zip(axes[0], names):
        panel = [(model, c) for model, items in curves.items() for c in items if c.name == name]
        for model, c in panel:
            _draw_curve(ax, model, c)
        ax.set_xlabel(panel[-1][1].x_label)
        ax.set_ylabel(_panel_label({model: c.y_label for model, c in panel}))
        ax.set_title(panel[-1][1].title)
        absent = [f"{model + ': ' if model else ''}{c.absent}" for model, c in panel if c.absent]
        if absent:
            ax.text(0.5, 0.5, "\n".join(fill(a, 60) for a in absent), transform=ax.transAxes, ha="center",
                    va="center", fontsize=7)
        if len(absent) == len(panel):  # nothing drawn: no 0-1 ticks under a "%" axis label
            ax.set_xticks([])
            ax.set_yticks([])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return _save(fig, out)


def _draw_curve(ax, model: str, c) -> None:
    from .explain.base import method_label

    x = [100 * v for v in c.x] if c.x_percent else list(c.x)
    for series, y in c.series.items():
        label = f"{model} / {method_label(series)}" if model else method_label(series)
        extra = c.labels.get(series)
        ys = [float("nan") if v is None else v for v in y]
        (line,) = ax.plot(x, ys, "--" if series in c.dashed else "-", marker="o" if len(x) <= 12 else None, ms=3,
                          label=f"{label} ({extra})" if extra else label)
        sd = c.spread.get(series) or []
        if any(v is not None for v in sd):
            band = [0.0 if v is None else v for v in sd]
            ax.fill_between(x, [a - b for a, b in zip(ys, band)], [a + b for a, b in zip(ys, band)],
                            color=line.get_color(), alpha=0.2, linewidth=0)


def _panel_label(labels: Mapping[str, str]) -> str:
    """The y label of a panel: the models' shared one, or one line per model where they differ."""
    distinct = list(dict.fromkeys(labels.values()))
    if len(distinct) == 1:
        return distinct[0]
    return "\n".join(f"{model}: {label}" if model else label for model, label in labels.items())
