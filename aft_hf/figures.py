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
from typing import Mapping, Optional, Sequence, Union

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


def attribution_grid(images: Tensor, maps: Mapping[str, Tensor], out: Union[str, Path],
                     row_titles: Optional[Sequence[str]] = None, normalized: bool = False,
                     alpha: float = 0.5, cmap: str = "jet", cell: float = 2.0,
                     plain: Sequence[str] = ()) -> Path:
    """Rows = images; columns = the image, then one overlay per ``maps`` key (e.g. "model / method").

    ``maps[key]`` is (B, 1, H, W) with values in [0, 1] (post-processed maps); ``images`` (B, 3, H, W).
    Keys in ``plain`` (e.g. a ground-truth mask) are drawn in grey on their own, not overlaid.
    """
    imgs = unnormalize(images) if normalized else images.clamp(0, 1)
    imgs = imgs.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    keys = list(maps)
    rows, cols = imgs.shape[0], 1 + len(keys)
    fig = Figure(figsize=(cell * cols, cell * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(imgs[r])
        axes[r, 0].set_ylabel(row_titles[r] if row_titles else f"image {r}", fontsize=8)
        for c, key in enumerate(keys, start=1):
            heat = maps[key][r, 0].detach().float().cpu().numpy()
            if key in plain:
                axes[r, c].imshow(heat, cmap="gray", vmin=0.0, vmax=1.0)
                continue
            axes[r, c].imshow(imgs[r])
            axes[r, c].imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=max(float(heat.max()), 1e-12))
        for c in range(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    for c, key in enumerate(keys, start=1):
        axes[0, c].set_title(key, fontsize=8)
    fig.tight_layout()
    if any(k not in plain for k in keys):
        _overlay_colorbar(fig, cmap, cell * rows)
    return _save(fig, out)


def _overlay_colorbar(fig, cmap: str, height_in: float) -> None:
    """One horizontal colour bar under the grid (a fixed 0.12 in high, 0.35 in below it, whatever the
    number of rows): what the overlay colours mean. Each map is drawn from 0 to its own maximum."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ax = fig.add_axes((0.25, -0.47 / height_in, 0.5, 0.12 / height_in))
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=cmap), cax=ax, orientation="horizontal")
    bar.set_label("relevance (each map scaled from 0 to its own maximum)", fontsize=8)
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
