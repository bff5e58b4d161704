"""aft_hf.figures draws PNGs without touching matplotlib's backend (notebooks keep inline plots)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys, matplotlib, torch
before = matplotlib.get_backend()
import aft_hf.figures as F
after_import = matplotlib.get_backend()
out = sys.argv[1]
F.attribution_grid(torch.rand(2, 3, 8, 8), {"m / saliency": torch.rand(2, 1, 8, 8)}, out + "/grid.png")
from aft_hf.results import Curve
roar = Curve("roar", "ROAR", [0.1, 0.5], {"saliency": [0.5, 0.3], "random": [0.5, 0.4]}, "removed", "acc", "roar")
F.metric_curves({"m": [roar]}, out + "/roar.png")
dele = Curve("deletion", "deletion", [0, 1], {"s": [1, 0]}, "removed", "p", "d", labels={"s": "AUC 0.200"})
F.metric_curves({"m": [dele], "n": [dele]}, out + "/del.png")
print(before, after_import, matplotlib.get_backend())
"""


@pytest.mark.slow
def test_import_and_drawing_keep_the_backend(tmp_path):
    # 'svg': a backend that is not Agg, as a notebook's inline backend is not; the old module forced Agg
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["svg", "svg", "svg"]
    for name in ("grid.png", "roar.png", "del.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def _drawn(monkeypatch, curves) -> Figure:
    import aft_hf.figures as F

    saved = []
    monkeypatch.setattr(F, "_save", lambda fig, out: saved.append(fig) or Path(out))
    F.metric_curves(curves, "unused.png")
    return saved[0]


def test_several_models_keep_each_y_label_and_their_spread_and_display_names(monkeypatch):
    from aft_hf.results import Curve

    def roar(intact, sd=None):
        return Curve("roar", "ROAR", [0.0, 0.5], {"integrated_gradients": [intact, 0.3], "random": [intact, 0.4]},
                     "removed", f"acc (intact {intact:.2f})", "roar",
                     spread={"integrated_gradients": [0.05, 0.02]} if sd else {})

    (ax,) = _drawn(monkeypatch, {"a": [roar(0.31, sd=True)], "b": [roar(0.16)]}).axes
    assert ax.get_ylabel() == "a: acc (intact 0.31)\nb: acc (intact 0.16)"
    assert len(ax.collections) == 1  # model a's band; b had one seed
    labels = ax.get_legend_handles_labels()[1]
    assert "a / Integrated Gradients" in labels and "b / random" in labels
    (ax,) = _drawn(monkeypatch, {"a": [roar(0.31)], "b": [roar(0.31)]}).axes
    assert ax.get_ylabel() == "acc (intact 0.31)"


def test_a_curve_that_is_not_a_result_names_its_model_instead(monkeypatch):
    from aft_hf.results import Curve

    drawn = Curve("roar", "ROAR", [0.0, 0.5], {"saliency": [0.9, 0.3]}, "removed", "acc", "roar")
    absent = Curve("roar", "ROAR", [0.0, 0.5], {}, "removed", "acc", "roar", absent="not a result, below the floor")
    (ax,) = _drawn(monkeypatch, {"good": [drawn], "weak": [absent]}).axes
    assert [t.get_text() for t in ax.texts] == ["weak: not a result, below the floor"]
    assert len(ax.lines) == 1
    assert len(ax.get_xticks()) > 0
    (ax,) = _drawn(monkeypatch, {"weak": [absent]}).axes  # nothing drawn: no 0-1 ticks under a "% removed" label
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    assert [t.get_text() for t in ax.texts] == ["weak: not a result, below the floor"]


def test_signed_maps_are_drawn_symmetric_about_zero(tmp_path, monkeypatch):
    """A raw (signed) map was clipped at 0, hiding its negative half; non-negative maps keep 0..max."""
    import torch
    from matplotlib.axes import Axes

    import aft_hf.figures as F

    overlays, titles = [], []
    real_imshow, real_title = Axes.imshow, Axes.set_title
    monkeypatch.setattr(Axes, "imshow", lambda self, x, **kw: (overlays.append(kw) if "alpha" in kw else None)
                        or real_imshow(self, x, **kw))
    monkeypatch.setattr(Axes, "set_title", lambda self, t, **kw: titles.append(t) or real_title(self, t, **kw))
    signed = torch.linspace(-2, 1, 64).view(1, 1, 8, 8)
    positive = torch.linspace(0, 3, 64).view(1, 1, 8, 8)
    F.attribution_grid(torch.rand(1, 3, 8, 8), {"raw": signed, "post": positive}, tmp_path / "grid.png")
    raw, post = overlays
    assert raw["cmap"] == F.SIGNED_CMAP and (raw["vmin"], raw["vmax"]) == (-2.0, 2.0)
    assert post["cmap"] == "jet" and (post["vmin"], post["vmax"]) == (0.0, 3.0)
    assert titles == ["image", "raw\n(signed)", "post"]
