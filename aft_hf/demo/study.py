"""``aft-hf demo --study``: dose-response of AFT in the world, for each threat model and budget.

For each norm and each trained budget eps (1/255; huber: eps = eps2) and each seed, the package trainer
fine-tunes the world CLIP with the demo's recipe (``world_aft.yaml``, only the attack budget changes);
every fine-tune and the original are measured on the same held-out images: the AFT objective at the
trained budget (``measure.aft_objective``), zero-shot accuracy clean and under L-inf APGD at every
budget of the study, and energy-in-mask, Gini and pointing of each saliency method. Writes study.json
(every number, per seed), study.md (tables built from the JSON) and dose_response.png.

Error bars: the standard error over seeds (sample sd / sqrt(seeds)) when there are several seeds,
else the per-image standard error of the single seed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from ..config import load_config
from ..evaluate.metrics import finite
from ..evaluate.stats import nanmean
from ..model import load_image_encoder
from .measure import aft_objective, measure, paired, spread
from .plan import DEFAULT_CONFIG, DemoOptions, fine_tune, measure_kwargs, prepare, robust_settings, threat_overrides

STUDY_METRICS = ("energy", "gini", "pointing", "pointing_tol")


def _summary(per_seed: list[float], per_image_se: float) -> dict:
    """Mean over seeds and its standard error (over seeds; the per-image SE for a single seed)."""
    s = spread(per_seed)
    n = len([v for v in per_seed if v == v])
    se = s["sd"] / math.sqrt(n) if n > 1 else per_image_se
    return {"mean": s["mean"], "se": se, "per_seed": per_seed}


def _per_image_se(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)].float()
    return x.std(unbiased=True).item() / math.sqrt(x.numel()) if x.numel() > 1 else float("nan")


def summarise(original: dict, original_objective: dict, runs: list[dict], objectives: list[dict],
              eps: float) -> dict:
    """One (norm, eps) cell of the study: saliency metrics, accuracy and objective, with paired deltas."""
    cell: dict = {"metrics": {}, "accuracy": {}, "objective": {}}
    for method, base in original["per_image"].items():
        cell["metrics"][method] = {}
        for metric in STUDY_METRICS:
            vals = [r["per_image"][method][metric] for r in runs]
            diffs = [paired(v, base[metric]) for v in vals]
            cell["metrics"][method][metric] = {
                "value": _summary([nanmean(v) for v in vals], _per_image_se(vals[0])),
                "delta": _summary([d["mean"] for d in diffs], diffs[0]["se"]), "per_seed_paired": diffs}
    n = original["per_image"][next(iter(original["per_image"]))]["energy"].numel()
    binomial = lambda p: math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))  # noqa: E731 (per-image SE of an accuracy)
    clean = [r["accuracy"]["clean"] for r in runs]
    cell["accuracy"]["clean"] = _summary(clean, binomial(clean[0]))
    for key in original["accuracy"]["robust"]:
        vals = [r["accuracy"]["robust"][key] for r in runs]
        cell["accuracy"][key] = _summary(vals, binomial(vals[0]))
    cell["accuracy"]["at_trained"] = cell["accuracy"].get(f"{eps:g}/255")
    adv = [o["adversarial"] for o in objectives]
    diffs = [paired(a, original_objective["adversarial"], higher_is_better=False) for a in adv]
    cell["objective"] = {"original": nanmean(original_objective["adversarial"]),
                         "original_se": _per_image_se(original_objective["adversarial"]),
                         "adversarial": _summary([nanmean(a) for a in adv], _per_image_se(adv[0])),
                         "delta": _summary([d["mean"] for d in diffs], diffs[0]["se"]), "per_seed_paired": diffs,
                         "clean": _summary([nanmean(o["clean"]) for o in objectives],
                                           _per_image_se(objectives[0]["clean"]))}
    return cell


def run_study(opts: DemoOptions, eps_list: Sequence[float]) -> dict:
    """Fine-tune and measure every (norm, eps, seed); write study.json, study.md, dose_response.png."""
    from .study_report import dose_response_figure, study_markdown

    start = time.perf_counter()
    eps_list = sorted({float(e) for e in eps_list})
    setup = prepare(opts)
    kw = measure_kwargs(opts, eps_list)
    original_model = load_image_encoder(setup.base_cfg.model.name_or_path)
    original = measure(original_model, setup.data, **kw)
    results: dict = {}
    for norm in opts.norms:
        results[norm] = {}
        for eps in eps_list:
            attack = load_config(opts.config or DEFAULT_CONFIG, threat_overrides(norm, eps) + setup.overrides).attack
            original_objective = aft_objective(original_model, original_model, setup.data.images, attack, seed=0)
            runs, objectives = [], []
            for seed in range(opts.seeds):
                _, final = fine_tune(opts, setup, norm, eps, seed, False, f"{norm}_eps{eps:g}")
                model = load_image_encoder(str(final))
                runs.append(measure(model, setup.data, seed=seed, **kw))
                objectives.append(aft_objective(model, original_model, setup.data.images, attack, seed=0))
            results[norm][f"{eps:g}"] = summarise(original, original_objective, runs, objectives, eps)
    study = {"settings": {"base": opts.base, "norms": list(opts.norms), "eps": eps_list, "seeds": opts.seeds,
                          "train_images": opts.train_images, "eval_images": opts.eval_images,
                          "eval_seed": opts.eval_seed, "methods": list(opts.methods),
                          "tolerance_px": opts.tolerance_px, "huber_eps2": "eps2 = eps", **robust_settings(opts),
                          "steps": setup.base_cfg.optim.max_steps, "aft_config": setup.base_cfg.to_dict()},
             "original": {"metrics": {m: {k: nanmean(v[k]) for k in STUDY_METRICS}
                                      for m, v in original["per_image"].items()},
                          "accuracy": original["accuracy"], "chance_energy": nanmean(original["chance"])},
             "results": results}
    study["wall_time_s"] = time.perf_counter() - start
    study = finite(study)
    out = Path(setup.out)
    (out / "study.json").write_text(json.dumps(study, indent=2))
    study = json.loads((out / "study.json").read_text())
    dose_response_figure(study, out / "dose_response.png")
    (out / "study.md").write_text(study_markdown(study))
    return study
