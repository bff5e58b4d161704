"""Why does robust accuracy move the way it does? Margins and the kind of flip under attack.

In the world every class is "{colour} {shape}" (label = colour_index * shapes + shape_index), so an
attack that changes the prediction changes the colour word, the shape word, or both. Together with
the clean margins this tells whether a fine-tune lost robustness by thinner margins or by a class
pair (e.g. two shapes) that became easy to swap.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..evaluate.apgd import apgd, ce_loss
from ..evaluate.zeroshot import ZeroShotClassifier
from ..threat_models import DEFAULT_NORM
from .measure import EvalSet


def _margins(logits: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine margin of the label over the best other class (logits / logit scale)."""
    z = logits.float() / scale
    rows = torch.arange(z.shape[0])
    true = z[rows, labels]
    other = z.clone()
    other[rows, labels] = float("-inf")
    return true - other.max(dim=1).values


def flip_analysis(encoder: torch.nn.Module, data: EvalSet, class_names: list[str], eps: float,
                  iterations: int = 20, seed: int = 0, batch_size: int = 64) -> dict:
    """Clean margins, then one APGD-CE run at ``eps`` (1/255, L-inf) on the correctly classified images:
    how many flip, whether colour, shape or both changed, and the most common (true -> predicted) pairs."""
    clf = ZeroShotClassifier(encoder, data.class_weights, data.logit_scale).eval()
    colours = [name.split(" ", 1)[0] for name in class_names]
    shapes = [name.split(" ", 1)[1] for name in class_names]
    generator = torch.Generator().manual_seed(seed)
    clean_m, adv_m, kinds, pairs, correct_n = [], [], Counter(), Counter(), 0
    for s in range(0, data.images.shape[0], batch_size):
        x, y = data.images[s:s + batch_size], data.labels[s:s + batch_size]
        with torch.no_grad():
            logits = clf(x)
        ok = logits.argmax(1) == y
        correct_n += int(ok.sum())
        clean_m.append(_margins(logits[ok], y[ok], data.logit_scale))
        if not ok.any():
            continue
        adv, _ = apgd(clf, x[ok], y[ok], eps / 255, DEFAULT_NORM, iterations, ce_loss, generator=generator)
        with torch.no_grad():
            adv_logits = clf(adv)
        adv_m.append(_margins(adv_logits, y[ok], data.logit_scale))
        for t, p in zip(y[ok].tolist(), adv_logits.argmax(1).tolist()):
            if t != p:
                colour, shape = colours[t] != colours[p], shapes[t] != shapes[p]
                kinds["both" if colour and shape else "colour" if colour else "shape"] += 1
                pairs[f"{class_names[t]} -> {class_names[p]}"] += 1
    clean_m, adv_m = torch.cat(clean_m), torch.cat(adv_m) if adv_m else torch.zeros(0)
    n = data.images.shape[0]
    return {"eps": eps, "iterations": iterations, "images": n, "clean_correct": correct_n,
            "clean_margin_mean": clean_m.mean().item() if clean_m.numel() else float("nan"),
            "clean_margin_median": clean_m.median().item() if clean_m.numel() else float("nan"),
            "adversarial_margin_mean": adv_m.mean().item() if adv_m.numel() else float("nan"),
            "robust_ce": (correct_n - sum(kinds.values())) / max(n, 1),
            "flips": {k: kinds.get(k, 0) for k in ("colour", "shape", "both")},
            "top_pairs": pairs.most_common(5)}
