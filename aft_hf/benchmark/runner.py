"""Run the benchmark: models x datasets, batches sharded across processes, resumable per batch.

Sharding (:mod:`aft_hf.evaluate.sharding`, shared with ``aft-hf evaluate``): batch b (images
``b*B .. (b+1)*B`` of the split) belongs to process ``b % P``. Its attack randomness is seeded by
(seed, b, budget), so a batch gives the same verdicts whichever process runs it and however many
there are. Each finished batch is written to
``OUT/state/<model>/<dataset>/batch_<b>.json`` at once (a killed run redoes at most the batches in
flight; a resumed run may use another number of processes); the per-batch records are gathered on the
main process, which writes ``result.json`` of the dataset and the reports. The state folder must be
shared by the processes (one machine, or a shared file system).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..evaluate.errors import EvaluationError
from ..evaluate.sharding import batch_bounds, batch_seed, in_batch_order, num_batches
from ..files import write_json
from .errors import BenchmarkError
from .protocol import Protocol, budget_key, robust_verdicts
from .suites import PROTOCOL_ROBUST_IMAGES, SuiteDataset, known_dataset
from .wds import WdsDataset

logger = logging.getLogger(__name__)
LOGIT_SCALE = 100.0
"""The protocol's logits: 100 * cos(image, class) for every model, whatever its own logit scale."""
STATE_DIR = "state"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class DatasetRequest:
    """A dataset to run: the reference given (Hub id or folder), its short name, protocol sample size."""

    ref: str
    name: str
    protocol_robust_images: int = PROTOCOL_ROBUST_IMAGES
    in_average: bool = True

    @classmethod
    def from_suite(cls, d: SuiteDataset) -> "DatasetRequest":
        return cls(d.hub_id, d.name, d.robust_images, d.in_average)

    @classmethod
    def from_ref(cls, ref: str) -> "DatasetRequest":
        known = known_dataset(ref)
        if known is not None:
            return cls.from_suite(known)
        name = ref.rstrip("/").replace("\\", "/").split("/")[-1]
        return cls(ref, name.removeprefix("wds_") or ref)


def read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class DatasetPlan:
    """What one dataset costs: images for clean accuracy, images attacked, steps per surviving image."""

    request: DatasetRequest
    data: WdsDataset
    clean_images: int
    robust_images: int
    targets: int
    steps_per_image: int

    @property
    def worst_steps(self) -> int:
        return self.robust_images * self.steps_per_image


def plan_dataset(request: DatasetRequest, data: WdsDataset, protocol: Protocol) -> DatasetPlan:
    n_clean = min(len(data), protocol.clean_images or len(data))
    wanted = protocol.robust_images or request.protocol_robust_images
    n_robust = min(wanted, n_clean)
    return DatasetPlan(request, data, n_clean, n_robust, protocol.targets_for(len(data.classnames)),
                       protocol.steps_per_image(len(data.classnames)))


def cost_lines(plans: Sequence[DatasetPlan], protocol: Protocol, num_models: int) -> list[str]:
    """The work a run implies, printed before it starts: images and attack gradient steps per dataset."""
    lines = [f"{'dataset':<20} {'images':>8} {'attacked':>9} {'targets':>7} {'steps/img/eps':>13} "
             f"{'worst-case steps':>17}"]
    total = 0
    for p in plans:
        steps = p.worst_steps * len(protocol.eps)
        total += steps
        lines.append(f"{p.request.name:<20} {p.clean_images:>8} {p.robust_images:>9} {p.targets:>7} "
                     f"{p.steps_per_image:>13} {steps:>17,}")
    lines.append(f"total per model: {total:,} gradient steps at most (forward+backward of the image encoder; "
                 f"an image stops being attacked once fooled); {num_models} model(s), budgets "
                 f"{', '.join(budget_key(e) for e in protocol.eps)}, precision {protocol.precision}")
    return lines


BATCH_FILES = "batch_*.json"
"""The per-batch records of a (model, dataset) folder (:func:`batch_path`)."""


def batch_path(folder: Path, b: int) -> Path:
    """Where batch ``b``'s record is saved."""
    return folder / f"batch_{b:06d}.json"


def saved_batches(folder: Path, total: int) -> int:
    """How many of the ``total`` batches of ``folder`` an earlier run saved."""
    return sum(batch_path(folder, b).is_file() for b in range(total))


class BatchWork:
    """The batches of one (model, dataset): computes, saves and loads per-batch records."""

    def __init__(self, classifier: torch.nn.Module, plan: DatasetPlan, protocol: Protocol, folder: Path,
                 image_size: int, device: torch.device):
        self.classifier, self.plan, self.protocol = classifier, plan, protocol
        self.folder, self.size, self.device = folder, image_size, device
        self.num_batches = num_batches(plan.clean_images, protocol.batch_size)

    def path(self, b: int) -> Path:
        return batch_path(self.folder, b)

    def bounds(self, b: int) -> tuple[int, int]:
        return batch_bounds(b, self.protocol.batch_size, self.plan.clean_images)

    def compute(self, b: int) -> dict:
        """Batch ``b``'s record: labels, clean predictions and top-5 hits, per budget the robust verdicts."""
        s, e = self.bounds(b)
        images = self.plan.data.images(s, e, self.size).to(self.device)
        labels = self.plan.data.labels(s, e).to(self.device)
        with torch.no_grad():
            logits = self.classifier(images)
        k = min(5, logits.shape[1])
        top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
        pred = logits.argmax(dim=1)
        record = {"batch": b, "start": s, "stop": e, "labels": labels.tolist(), "pred": pred.tolist(),
                  "top5": top5.tolist(), "robust": {}}
        n_att = max(0, min(e, self.plan.robust_images) - s)
        if n_att:
            x, y = images[:n_att], labels[:n_att]
            alive = pred[:n_att] == y
            for i, eps in enumerate(sorted(self.protocol.eps)):
                verdict = robust_verdicts(self.classifier, x, y, alive, eps, self.protocol,
                                          batch_seed(self.protocol.seed, b, i), clean_logits=logits[:n_att])
                record["robust"][budget_key(eps)] = verdict.tolist()
                if self.protocol.nested:
                    alive = verdict
        return record

    def saved_batches(self) -> int:
        """How many of this (model, dataset)'s batches an earlier run saved (any process's)."""
        return saved_batches(self.folder, self.num_batches)

    def run(self, mine: Sequence[int], progress: Callable[[int, int, float], None]) -> list[dict]:
        """Records of the batches ``mine``: saved ones loaded, the others computed and saved one by one;
        ``progress(computed, to_compute, seconds)`` after each computed batch (a resumed run counts only the
        batches it computes, so its estimate is not flattered by the loaded ones)."""
        saved = {b: read_json(self.path(b)) for b in mine}
        missing = [b for b in mine if saved[b] is None]
        for i, b in enumerate(missing):
            start = time.perf_counter()
            saved[b] = self.compute(b)
            write_json(self.path(b), saved[b])
            progress(i + 1, len(missing), time.perf_counter() - start)
        return [saved[b] for b in mine]


def summarise(records: Sequence[dict], plan: DatasetPlan, protocol: Protocol) -> dict:
    """The dataset's numbers from its per-batch records (every batch once, in order; checked)."""
    try:
        records = in_batch_order(records, num_batches(plan.clean_images, protocol.batch_size), plan.request.name)
    except EvaluationError as e:
        raise BenchmarkError(str(e)) from None
    labels = [y for r in records for y in r["labels"]]
    pred = [p for r in records for p in r["pred"]]
    top5 = [t for r in records for t in r["top5"]]
    correct = [p == y for p, y in zip(pred, labels)]
    per_class: dict[int, list[bool]] = {}
    for y, c in zip(labels, correct):
        per_class.setdefault(y, []).append(c)
    robust = {budget_key(e): [v for r in records for v in r["robust"].get(budget_key(e), [])]
              for e in sorted(protocol.eps)}
    for key, verdicts in robust.items():
        if len(verdicts) != plan.robust_images:
            raise BenchmarkError(f"{plan.request.name}: {len(verdicts)} verdicts at {key}, expected "
                                 f"{plan.robust_images}")
    n_rob = max(plan.robust_images, 1)
    return {
        "clean_top1": sum(correct) / len(correct),
        "clean_top5": sum(top5) / len(top5) if len(plan.data.classnames) >= 5 else None,
        "clean_mean_per_class_recall": sum(sum(v) / len(v) for v in per_class.values()) / len(per_class),
        "clean_images": len(correct),
        "robust_top1": {k: sum(v) / n_rob for k, v in robust.items()},
        "robust_images": plan.robust_images,
        "clean_top1_attacked_images": sum(correct[:plan.robust_images]) / n_rob,
        "targets": plan.targets,
        "attacks": ["APGD-CE"] + (["APGD-T"] if plan.targets else []),
        "worst_case_steps_per_image": plan.steps_per_image,
    }


BINDING_SETTINGS = ("text_model", "protocol", "split")
"""The settings every result in an output folder shares: a run with others is refused. Models and datasets are not
among them: each (model, dataset) has its own state folder, so a later run may add models or datasets (or give
them in another order) and reuse what is saved; a dataset given again must be the same (its record is compared)."""


def check_settings(out: Path, settings: dict, write: bool = True) -> None:
    """A resumed run must measure what the saved work measured: refuse an output folder whose saved settings differ
    in :data:`BINDING_SETTINGS` or in the record of a dataset given again; record the union of models and datasets.

    Every process checks (so that all of them stop, not only the main one); only ``write`` records them.
    """
    path = out / STATE_DIR / SETTINGS_FILE
    saved = _with_fields_added_since(read_json(path), settings)
    if saved is not None and not _any_work(out / STATE_DIR):
        saved = None  # a run that stopped before its first batch (a mistyped model, say) binds nothing: replaced
    if saved is not None:
        given = {d.get("name") for d in settings.get("datasets", [])}
        names = given & {d.get("name") for d in saved.get("datasets", [])}

        def bound(s: dict) -> dict:
            return {**{k: s.get(k) for k in BINDING_SETTINGS},
                    "datasets": [d for d in s.get("datasets", []) if d.get("name") in names]}

        differences = _differences(bound(saved), bound(settings))
        if differences:
            raise BenchmarkError(f"'{out}' holds a benchmark run with other settings ({'; '.join(differences)}): use "
                                 "the same protocol, split, text model and dataset copies (models and datasets may be "
                                 "added), or another --out")
        settings = {**settings, "models": [*saved.get("models", []), *(m for m in settings["models"]
                                                                         if m not in saved.get("models", []))],
                    "datasets": [d for d in saved.get("datasets", []) if d.get("name") not in given]
                    + settings.get("datasets", [])}
    if write and settings != saved:
        write_json(path, settings)


def _with_fields_added_since(saved: Optional[dict], settings: dict) -> Optional[dict]:
    """``saved`` with the dataset-record fields that a later aft_hf added (``content_sha256``) taken from
    ``settings``: a folder written before a field existed is compared on the fields it has."""
    new_records = {d.get("name"): d for d in settings.get("datasets", []) if isinstance(d, dict)}
    for old in (saved or {}).get("datasets", []):
        if isinstance(old, dict) and old.get("name") in new_records:
            old.update({k: v for k, v in new_records[old["name"]].items() if k not in old})
    return saved


def _any_work(state: Path) -> bool:
    """Whether a run saved any batch or dataset result under ``state``."""
    return any(state.rglob(BATCH_FILES)) or any(state.rglob("result.json"))


def _differences(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: saved -> new`` for each setting that differs, nested dicts by their dotted keys, long values cut."""
    def show(value) -> str:
        text = json.dumps(value) if value is not None else "(none)"
        return text if len(text) <= 60 else text[:57] + "..."

    def as_dict(value):  # lists of records compare record by record, by name where each has one (datasets[pcam].ref)
        if not isinstance(value, list):
            return value
        names = [v.get("name") if isinstance(v, dict) else None for v in value]
        return dict(zip(names, value)) if None not in names and len(set(names)) == len(names) else dict(enumerate(value))

    out = []
    for key in sorted(set(saved) | set(new), key=str):
        old_value, new_value = saved.get(key), new.get(key)
        if old_value == new_value:
            continue
        name = f"{prefix[:-3]}[{key}]" if prefix.endswith("[].") else f"{prefix}{key}"
        if (isinstance(old_value, list) and isinstance(new_value, list)
                and any(isinstance(v, dict) for v in old_value + new_value)):
            out += _differences(as_dict(old_value), as_dict(new_value), f"{name}[].")
        elif isinstance(old_value, dict) and isinstance(new_value, dict):
            out += _differences(old_value, new_value, f"{name}.")
        elif prefix.endswith("[].") and (old_value is None or new_value is None):  # a record on one side only
            out.append(f"{name}: {'added' if old_value is None else 'not given now'}")
        elif key == "content_sha256":
            out.append(f"{prefix[:-1]}: its files changed (class names, templates, labels or shards)")
        else:
            out.append(f"{name}: {show(old_value)} -> {show(new_value)}")
    return out


__all__ = ["BatchWork", "DatasetPlan", "DatasetRequest", "LOGIT_SCALE", "check_settings", "cost_lines",
           "plan_dataset", "summarise"]
