"""Figures (matplotlib, PNG): attribution grids with overlays, ROAR curves, deletion/insertion curves.

Images in aft_hf are pixels in [0, 1] and are shown as they are. Images that went through a CLIP
processor (``pixel_values``) must be un-normalised with CLIP's mean/std, not ImageNet's
(docs/method.md#traps): pass ``normalized=True`` or call :func:`unnormalize`.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: saving
a PNG needs no backend at all, so importing this module never selects one (forcing ``Agg`` here
would break inline plots in a notebook that imports aft_hf) and nothing opens a window.
"""

from __future__ import annotations

from pathlib import Path
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


def roar_curves(results: Mapping[str, dict], out: Union[str, Path]) -> Path:
    """ROAR test accuracy vs fraction removed; ``results`` = {model: roar() result}. Random dashed, bars: sd
    over evaluator seeds. Each model's legend gives its evaluator's accuracy on intact images; a model whose
    evaluator is below the floor is not drawn but named in the panel as "not a result"."""
    from .evaluate.faithfulness import roar_flag

    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    flagged = []
    for model, res in results.items():
        if roar_flag(res):
            flagged.append(f"{model or 'ROAR'}: not a result, evaluator {res.get('intact_accuracy', float('nan')):.2f} "
                           f"on intact images < floor {res.get('floor', float('nan')):.2f}")
            continue
        x = [100 * f for f in res["fractions"]]
        sd = res.get("accuracy_sd") or {}
        for method, acc in res["accuracy"].items():
            style = "--" if method == "random" else "-"
            err = [e or 0.0 for e in sd[method]] if method in sd else None
            name = f"{model} / {method}" if model else method
            ax.errorbar(x, acc, yerr=err, fmt=style, marker="o", ms=3, capsize=2,
                        label=f"{name} (intact {res['intact_accuracy']:.2f})" if "intact_accuracy" in res else name)
    if flagged:
        ax.text(0.02, 0.02, "\n".join(flagged), transform=ax.transAxes, fontsize=6, color="firebrick", va="bottom")
    ax.set_xlabel("pixels removed and retrained (%)")
    kinds = {"CNN" if "CNN" in str(r.get("evaluator")) else "linear probe" if "probe" in str(r.get("evaluator"))
             else "evaluator" for r in results.values() if "accuracy" in r}
    ax.set_ylabel(f"test accuracy (retrained {kinds.pop() if len(kinds) == 1 else 'evaluator'})")
    ax.set_title("ROAR (lower = more faithful)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=6)
    return _save(fig, out)


def perturbation_curves(results: Mapping[str, dict], out: Union[str, Path]) -> Path:
    """Deletion and/or insertion curves: ``results`` = {model: {"deletion": {...}, "insertion": {...}}}."""
    modes = [m for m in ("deletion", "insertion") if any(m in r for r in results.values())]
    fig = Figure(figsize=(5 * max(len(modes), 1), 3.6))
    axes = fig.subplots(1, max(len(modes), 1), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for model, res in results.items():
            if mode not in res:
                continue
            x = [100 * f for f in res[mode]["fractions"]]
            for method, val in res[mode]["methods"].items():
                style = "--" if method == "random" else "-"
                name = f"{model} / {method}" if model else method
                ax.plot(x, val["curve"], style, label=f"{name} (AUC {val['auc']:.3f})")
        orders = {r[mode].get("order", "most") for r in results.values() if mode in r}
        first = "least relevant first" if orders == {"least"} else "most relevant first" if orders == {"most"} else ""
        ax.set_xlabel(f"pixels {'removed' if mode == 'deletion' else 'inserted'} (%)" + (f", {first}" if first else ""))
        normalised = any("clean_probability" in r.get(mode, {}) for r in results.values())
        ax.set_ylabel("label probability / model's clean probability" if normalised
                      else "zero-shot probability of the label")
        ax.set_title(f"{mode} ({'lower' if mode == 'deletion' else 'higher'} AUC = better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, out)
