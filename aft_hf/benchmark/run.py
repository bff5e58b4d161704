"""``run_benchmark``: the whole run, one process or several under ``accelerate launch``.

Order: open every dataset (the main process first, so the ``datasets`` cache is built once), print the
cost, then per model and dataset: batches (sharded, saved one by one), gather, the dataset's
``result.json``, and the reports rewritten, so a killed run leaves a report of what is done and
resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from ..env import emulated_bf16_warning
from ..evaluate.runner import distinct_slugs, numbered
from ..evaluate.sharding import Shard, make_accelerator, num_batches
from ..evaluate.zeroshot import ZeroShotClassifier
from ..files import WEIGHTS_HASH_KEY, write_json
from ..outputs import check_results_owner, claim_results_folder
from .errors import BenchmarkError, DatasetNotHere
from .protocol import PrecisionForward, Protocol
from .report import build_report, dataset_entry, write_reports
from .runner import (
    LOGIT_SCALE,
    STATE_DIR,
    BatchWork,
    DatasetPlan,
    DatasetRequest,
    check_settings,
    cost_lines,
    plan_dataset,
    read_json,
    saved_batches,
    summarise,
)
from .wds import open_wds
from .weights import WEIGHTS_FILE, check_same_weights, fingerprint, measured_weights

logger = logging.getLogger(__name__)
WRITER = "aft-hf benchmark"
"""How a benchmark folder names its writer in the results manifest (:func:`aft_hf.outputs.claim_results_folder`)."""


def run_work(plans: Sequence[DatasetPlan], protocol: Protocol) -> int:
    """Image passes through the encoder that ``plans`` imply at most: clean ones, and every attack step of
    every attacked image at every budget (an image leaves the attack once fooled, so usually far fewer)."""
    return sum(p.clean_images + p.worst_steps * len(protocol.eps) for p in plans)


def _whole_run_eta(classifier, seconds: float, work_left: int, processes: int) -> None:
    rate = classifier.image_passes / max(seconds, 1e-9)
    left = work_left / max(rate * processes, 1e-9)
    logger.info("throughput %.1f image passes/s per process; the rest of the run (%s passes at most, %d "
                "process(es)): at most about %.0f s (%.1f h), less as images are fooled", rate, f"{work_left:,}",
                processes, left, left / 3600)


def _eta(name: str, position: int, total: int, seconds: float, started: list) -> None:
    if not started:
        started.append(time.perf_counter() - seconds)
        left = (total - position) * seconds
        logger.info("%s: first batch took %.1f s; this process's %d remaining batches: about %.0f s (%.1f h)",
                    name, seconds, total - position, left, left / 3600)
    elif position == total or position % 10 == 0:
        elapsed = time.perf_counter() - started[0]
        logger.info("%s: %d/%d batches of this process, %.0f s elapsed, about %.0f s left", name, position, total,
                    elapsed, elapsed / position * (total - position))


def _work_left(folder: Path, plan: DatasetPlan, protocol: Protocol) -> int:
    """:func:`run_work` of one (model, dataset) less the share of its batches an earlier run saved."""
    if read_json(folder / "result.json") is not None:
        return 0
    total = num_batches(plan.clean_images, protocol.batch_size)
    return round(run_work([plan], protocol) * (total - saved_batches(folder, total)) / max(total, 1))


def _open_all(requests: Sequence[DatasetRequest], split: str, data_root: Optional[str]) -> list:
    """Every dataset opened, or one error listing each that cannot be (a partial mirror: all its gaps at once)."""
    data, problems, not_here = [], [], []
    for r in requests:
        try:
            data.append(open_wds(r.ref, split, data_root))
        except DatasetNotHere as e:
            not_here.append(e)
        except BenchmarkError as e:
            problems.append(str(e))
    if len(not_here) == 1:
        problems.append(str(not_here[0]))
    elif not_here:  # a suite against a partial mirror, offline: one sentence, not a paragraph per dataset
        where = f"under --data-root '{data_root}'" if data_root else "(no --data-root given)"
        problems.append(f"no local copy {where} of {', '.join(e.repo_id for e in not_here)}, and {not_here[0].why}")
    if len(problems) == 1 and len(data) == len(requests) - 1:
        raise BenchmarkError(problems[0])
    if problems:
        raise BenchmarkError(f"{len(requests) - len(data)} of {len(requests)} datasets cannot be opened: "
                             + "; ".join(problems))
    return data


def run_benchmark(models: Sequence[str], requests: Sequence[DatasetRequest], out: str | Path,
                  protocol: Optional[Protocol] = None, text_model: Optional[str] = None, data_root: Optional[str] = None,
                  split: str = "test", device: str = "auto", accelerator=None, print_fn=print,
                  compile_encoder: bool = False) -> dict:
    """Benchmark ``models`` on ``requests``; returns the report (also written to ``out``) on the main process,
    None on the others. ``compile_encoder`` runs each image encoder through ``torch.compile`` (dynamic shapes):
    a compilation per model first, then cheaper passes; speed only, so not part of the protocol (a run can be
    resumed with or without it), recorded under ``launch``."""
    from ..explain.loading import check_text_sources, load_models_and_texts

    protocol = protocol or Protocol()
    check_results_owner(out, WRITER)  # evaluate's or explain's results: never replaced (first: the cheapest check)
    if not models:
        raise BenchmarkError("no model given (--model)")
    check_text_sources(models, text_model or None)  # configs only: a mistyped --model fails before any dataset is read
    folders = _state_folders(models, Path(out))
    _check_requests(requests, data_root)
    out = Path(out)
    acc = accelerator or make_accelerator(device)
    main = acc.is_main_process
    if main and (warning := emulated_bf16_warning(acc.device.type, protocol.precision)):
        logger.warning("--mixed-precision bf16: %s", warning)
    with acc.main_process_first():
        data = _open_all(requests, split, data_root)
    plans = [plan_dataset(r, d, protocol) for r, d in zip(requests, data)]
    entries = [dataset_entry(p, protocol) for p in plans]
    settings = {"models": list(models), "text_model": text_model, "protocol": protocol.as_dict(), "split": split,
                "datasets": [{**{k: e[k] for k in ("name", "ref", "images", "clean_images", "robust_images")},
                              "content_sha256": p.data.content_sha256} for e, p in zip(entries, plans)]}
    check_settings(out, settings, write=main)
    if main:
        claim_results_folder(out, WRITER)  # so evaluate and explain refuse this folder in turn
        _announce(plans, protocol, len(models), print_fn)
    launch = {"num_processes": acc.num_processes, "device": acc.device.type, "compiled_encoder": compile_encoder,
              "image_sizes": {}}
    results: dict[str, dict] = {m: {} for m in models}
    report = None
    left = sum(_work_left(out / STATE_DIR / folders[m] / p.request.name, p, protocol) for m in models for p in plans)
    run_state = {"work_left": left, "eta_logged": False}
    measured = {m: measured_weights(out / STATE_DIR / folders[m]) for m in models}  # read before anyone writes
    acc.wait_for_everyone()
    checked = _check_saved_weights(models, folders, measured, out, text_model, acc.device, launch)
    for model in models:
        state = out / STATE_DIR / folders[model]
        saved = {p.request.name: read_json(state / p.request.name / "result.json") for p in plans}
        todo = [p for p in plans if saved[p.request.name] is None]
        for name, result in saved.items():
            if result is not None:
                results[model][name] = result
                if main:
                    logger.info("%s on %s: already done in '%s' (loaded, not recomputed)", model, name, state / name)
        if not todo:
            continue
        (encoder,), (text,), _ = load_models_and_texts([model], text_model, acc.device)
        launch["image_sizes"][model] = encoder.image_size
        weights = checked.get(model) or fingerprint(encoder, text)
        if main and measured[model] is None:
            write_json(state / WEIGHTS_FILE, {"model": model, "path": _local_path(model),
                                              "text_model": text_model or model, **weights})
        if compile_encoder:
            encoder.compile(dynamic=True)  # in place: parameter names (and the attack's functional_call) unchanged
        for plan in todo:
            results[model][plan.request.name] = _run_dataset(acc, encoder, text, plan, protocol,
                                                             state / plan.request.name, model, run_state,
                                                             weights[WEIGHTS_HASH_KEY])
            run_state["work_left"] = max(run_state["work_left"] - run_work([plan], protocol), 0)
            if main:
                report = write_reports(build_report(models, text_model, protocol, entries, results, launch, folders), out)
            acc.wait_for_everyone()
        del encoder, text
    if main:
        report = write_reports(build_report(models, text_model, protocol, entries, results, launch, folders), out)
    acc.wait_for_everyone()
    return report if main else None


def _check_saved_weights(models: Sequence[str], folders: dict, measured: dict, out: Path, text_model: Optional[str],
                         device, launch: dict) -> dict:
    """Before any batch: each model with saved work loaded, hashed and compared with what that work measured
    (:func:`aft_hf.benchmark.weights.check_same_weights`), so that a changed model or text tower stops the run
    before hours go into the other models. Returns {model: its fingerprint}; records the image sizes."""
    from ..explain.loading import load_models_and_texts

    checked = {}
    for model in (m for m in models if measured[m] is not None):
        (encoder,), (text,), _ = load_models_and_texts([model], text_model, device)
        checked[model] = fingerprint(encoder, text)
        check_same_weights(model, text_model or model, out / STATE_DIR / folders[model], measured[model], checked[model])
        launch["image_sizes"][model] = encoder.image_size
        del encoder, text
    return checked


def _local_path(model: str) -> Optional[str]:
    """The resolved folder of a local model (how a later run matches it, however it is spelled); None for Hub ids."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else None


def _check_requests(requests: Sequence[DatasetRequest], data_root: Optional[str]) -> None:
    """The datasets asked for, checked before any is opened: at least one, distinct names, a --data-root folder."""
    if not requests:
        raise BenchmarkError("no dataset given (--suite or --datasets)")
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise BenchmarkError(f"--data-root '{data_root}' is not a folder (it holds local copies named like the "
                             "Hub datasets, e.g. DIR/wds_vtab-cifar10)")
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"two datasets share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")


def _announce(plans: Sequence[DatasetPlan], protocol: Protocol, num_models: int, print_fn) -> None:
    """What the run will do, before it starts: a sample smaller than asked for, and the work per dataset."""
    for p in plans:
        if (protocol.robust_images or 0) > p.robust_images:  # the attacked images are the first clean ones
            logger.warning("%s: %d images attacked, not the %d asked for: it has %d %s", p.request.name,
                           p.robust_images, protocol.robust_images, p.clean_images,
                           "images" if p.clean_images == len(p.data) else "images in the clean sample (--clean-images)")
    for line in cost_lines(plans, protocol, num_models):
        print_fn(line)


def _state_folders(models: Sequence[str], out: Path) -> dict[str, str]:
    """Each model's own folder name under ``state/`` (and its column and card): `builtin:tiny-clip` and
    `./tiny-clip` get two. A model given twice (`run/final` and `./run/final/`) is refused. A model that an earlier
    run in ``out`` measured keeps its folder (named in its ``weights.json``), whatever the order of ``--model`` now."""
    where = [_local_path(m) or m for m in models]
    if len(set(where)) != len(where):
        raise BenchmarkError("a model is given twice (" + ", ".join(m for m, w in zip(models, where)
                                                                  if where.count(w) > 1) + ")")
    owners = {f.parent.name: read_json(f) or {} for f in sorted(Path(out, STATE_DIR).glob(f"*/{WEIGHTS_FILE}"))}
    folders = {}
    for model, path in zip(models, where):  # by the name given, else by the folder (`./run/final` then `run/final`)
        name = next((n for n, o in owners.items() if o.get("model") == model), None) or next(
            (n for n, o in owners.items() if o.get("path") and o.get("path") == path), None)
        if name is not None:
            folders[model] = name
    taken = set(owners)
    for model, name in zip(models, distinct_slugs(models)):
        if model not in folders:
            folders[model] = numbered([*sorted(taken), name], "_")[-1]  # not a folder another model measured
            taken.add(folders[model])
    return folders


def _run_dataset(acc, encoder, text, plan: DatasetPlan, protocol: Protocol, folder: Path, model: str,
                 run_state: dict, weights_sha256: str) -> dict:
    name = plan.request.name
    weights = text.class_embeddings(plan.data.classnames, plan.data.templates).to(acc.device)
    classifier = PrecisionForward(ZeroShotClassifier(encoder, weights, LOGIT_SCALE), protocol.precision).eval()
    work = BatchWork(classifier, plan, protocol, folder, encoder.image_size, acc.device)
    shard = Shard.of(acc)
    mine = shard.batches(work.num_batches)
    if acc.is_main_process:
        logger.info("%s on %s: %d batches of %d over %d process(es)", model, name, work.num_batches,
                    protocol.batch_size, acc.num_processes)
        done = work.saved_batches()
        if done:
            logger.info("%s on %s: resuming: %d of %d batches already saved in '%s' (loaded, not recomputed)",
                        model, name, done, work.num_batches, folder)
    started: list = []

    def progress(position: int, total: int, seconds: float) -> None:
        if not acc.is_main_process:
            return
        if not run_state["eta_logged"]:  # once per run, after its first computed batch
            run_state["eta_logged"] = True
            _whole_run_eta(classifier, seconds, run_state["work_left"], acc.num_processes)
        _eta(f"{model} / {name}", position, total, seconds, started)

    records = work.run(mine, progress)
    result = summarise(shard.gather(records), plan, protocol)
    result[WEIGHTS_HASH_KEY] = weights_sha256
    if acc.is_main_process:
        write_json(folder / "result.json", result)
        rob = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result["robust_top1"].items())
        logger.info("%s on %s: clean %.1f%% (%d images), robust %s (%d images)", model, name,
                    100 * result["clean_top1"], result["clean_images"], rob, result["robust_images"])
    return result


__all__ = ["make_accelerator", "run_benchmark"]
