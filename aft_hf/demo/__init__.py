"""``aft-hf demo``: the whole pipeline, offline, in a synthetic world where the right answer is known.

    world data -> the shipped world CLIP -> AFT (package trainer) and a noise control, several seeds
    -> maps and metrics on held-out images with target masks -> report + figures -> Hub-ready folder

The AFT runs use the package's own trainer and config format (``aft_hf/demo/world_aft.yaml``,
overridable like ``aft-hf train``); only model and data differ from the ImageNet recipes.
"""

from __future__ import annotations

import logging
import time

from ..model import load_image_encoder
from .plan import (
    DEFAULT_CONFIG,
    HEADLINE,
    DemoOptions,
    Setup,
    fine_tune,
    measure_kwargs,
    prepare,
    robust_settings,
    threat_label,
    threat_overrides,
)

logger = logging.getLogger(__name__)
__all__ = ["DEFAULT_CONFIG", "HEADLINE", "DemoOptions", "Setup", "prepare", "run_demo",
           "threat_overrides"]


def run_demo(opts: DemoOptions) -> dict:
    """Run everything and write ``opts.out``; returns the report dict (as written to report.json)."""
    from ..files import WEIGHTS_HASH_KEY, folder_weights_sha256
    from ..hub import prepare_hub_folder
    from .measure import aft_objective, measure
    from .report import aggregate, card_report, metrics_figure, objective_table, saliency_grid, verdicts, write_report

    start = time.perf_counter()
    setup = prepare(opts)
    data, kw = setup.data, measure_kwargs(opts, opts.robust_eps)
    logger.info("measuring the original world CLIP on %d held-out images", opts.eval_images)
    original_model = load_image_encoder(setup.base_cfg.model.name_or_path)
    original = measure(original_model, data, **kw)
    threats, runs, finals, objectives = [], {}, {}, {}
    for norm in opts.norms:
        arms = {f"{o}_{norm}": o for o in opts.objectives if o != "embedding"}  # e.g. tecoa_linf
        variants = [f"aft_{norm}"] + ([f"control_{norm}"] if opts.control else []) + list(arms)
        threats.append({"norm": norm, "aft": variants[0], "control": variants[1] if opts.control else None,
                        "objectives": arms})
        for v in variants:
            runs[v], finals[v], objectives[v] = [], [], []
        for seed in range(opts.seeds):
            for variant in variants:
                cfg, final = fine_tune(opts, setup, norm, opts.eps, seed, variant.startswith("control"), variant,
                                       arms.get(variant, "embedding"))
                model = load_image_encoder(str(final))
                finals[variant].append(str(final))
                runs[variant].append(measure(model, data, seed=seed, **kw))
                objectives[variant].append(aft_objective(model, original_model, data.images, cfg.attack, seed=0))
        threats[-1]["label"] = threat_label(cfg.attack)
        threats[-1]["original_objective"] = aft_objective(original_model, original_model, data.images, cfg.attack,
                                                          seed=0)
    report = {"settings": {"base": opts.base, "train_images": opts.train_images, "train_seed": opts.train_seed,
                           "eval_images": opts.eval_images, "eval_seed": opts.eval_seed,
                           "methods": list(opts.methods), "tolerance_px": opts.tolerance_px,
                           "robust_eps": list(opts.robust_eps), **robust_settings(opts),
                           "objectives": list(opts.objectives),
                           "attack": "; ".join(t["label"] for t in threats),
                           "steps": setup.base_cfg.optim.max_steps, "aft_config": setup.base_cfg.to_dict(),
                           "world": setup.world.to_dict()},
              "seeds": list(range(opts.seeds)), "variants": list(runs), "models": finals,
              "threats": [{k: v for k, v in t.items() if k != "original_objective"} for t in threats],
              **aggregate(original, runs, opts.methods)}
    report["objective"] = objective_table(threats, objectives)
    report["verdicts"] = verdicts(report)
    first = threats[0]["aft"]
    figures = {"saliency_grid": saliency_grid(data.images, data.masks, original, runs[first][0], opts.methods,
                                              setup.out / "saliency_grid.png"),
               "metrics": metrics_figure(report, setup.out / "metrics.png")}
    if opts.roar is not None:
        from .report import variant_label
        from .roar import roar_figure, roar_verdicts, world_roar

        logger.info("ROAR: original and the AFT variants on %d + %d fresh world images", opts.roar.train_images,
                    opts.roar.test_images)
        models = {"original": [original_model],
                  **{t["aft"]: [load_image_encoder(p) for p in finals[t["aft"]]] for t in threats}}
        report["roar"] = world_roar(opts.roar, setup.world, data.class_weights, data.logit_scale, models,
                                    progress=opts.progress)
        report["verdicts"] += roar_verdicts(report["roar"], variant_label)
        figures["roar"] = roar_figure(report["roar"], setup.out / "roar.png", variant_label)
    report["figures"] = {k: v.name for k, v in figures.items()}
    report["wall_time_s"] = time.perf_counter() - start
    report = write_report(report, setup.out)
    card = card_report(report, runs[first][0], opts.repo_id)
    card[WEIGHTS_HASH_KEY] = folder_weights_sha256(finals[first][0])  # the run the demo measured is this folder
    prepare_hub_folder(finals[first][0], setup.out / "hub_folder", repo_id=opts.repo_id, report=card,
                       figure=figures["saliency_grid"], overwrite=True)
    logger.info("demo finished in %.0f s: see %s and %s", report["wall_time_s"], setup.out / "report.md",
                setup.out / "saliency_grid.png")
    return report
