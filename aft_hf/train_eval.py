"""Evaluation while training (``eval.*``): how far the encoder has moved, and zero-shot accuracy.

    every ``eval.every_steps`` steps, on a fixed held-out subset, on the main process:
        eval/clean_distance        mean ||f(x) - f_theta0(x)||^2 on clean images (the AFT distance)
        eval/zeroshot_top1         clean zero-shot accuracy          (needs text tower + class names)
        eval/robust_top1_eps{e}    zero-shot accuracy under L-inf PGD at e/255 (a fast estimate)

Zero-shot needs the base's text tower (a full ``CLIPModel``), a projected ``pooled`` embedding and
class names (the label column's ``ClassLabel``, ``imagenet``, or a names file); without them only
the distance is measured and the log says why. Labels are class indices or class names (a
``metadata.jsonl`` with ``"label": "cat"``), looked up in the class names; a label without a name
is refused, as ``aft-hf evaluate`` refuses it. The classifier and the accuracies are
``aft-hf evaluate``'s (:mod:`aft_hf.evaluate.zeroshot`); the robust accuracy is the package's L-inf
PGD of ``eval.attack_steps`` steps (momentum, random start), a fast estimate that over-estimates
robustness: ``aft-hf evaluate`` runs the field's protocol (APGD-CE then APGD-T, 100 steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import datasets
import torch
from accelerate.logging import get_logger
from torch import Tensor

from .attack import embedding_distance
from .config import DataConfig, TrainConfig
from .data.images import DECODE_ERRORS, ImageGeometry, ImageModeError, image_geometry, open_image, to_rgb, to_tensor
from .data.loading import DataError, _load_hub_or_folder
from .evaluate.data import names_from_column
from .evaluate.errors import EvaluationError
from .model import ImageEncoder

logger = get_logger(__name__)  # main process only: every rank builds the evaluator
SPLIT_PREFERENCE = ("validation", "test")


def _eval_data_config(cfg: TrainConfig) -> DataConfig:
    e, d = cfg.eval, cfg.data
    same = e.eval_dataset is None
    return DataConfig(dataset=d.dataset if same else e.eval_dataset,
                      data_dir=(d.data_dir if same else None) if e.eval_data_dir is None else e.eval_data_dir,
                      config_name=d.config_name if same else None, split=e.eval_split, image_column=d.image_column)


EVAL_ATTACK = "pgd"
"""The attack of the robust accuracy while training: the package's L-inf PGD, a fast estimate (the module docstring)."""


def load_eval_images(cfg: TrainConfig, size: "int | ImageGeometry") -> tuple[Tensor, Optional[list], object, str]:
    """The held-out subset: images (N, 3, size, size) in [0, 1], raw labels (indices or names) or None,
    label feature, split.

    ``size``: the model's :class:`~aft_hf.data.images.ImageGeometry` (or a side: CLIP's resize + crop)."""
    geometry = ImageGeometry.of(size)
    dcfg = _eval_data_config(cfg)
    ds = _load_hub_or_folder(dcfg, None)
    split = dcfg.split or ""
    if isinstance(ds, datasets.DatasetDict):
        split = next((s for s in SPLIT_PREFERENCE if s in ds), next(iter(ds)))
        ds = ds[split]
    if dcfg.dataset == cfg.data.dataset and dcfg.data_dir == cfg.data.data_dir and split == cfg.data.split:
        logger.warning("eval: split '%s' of '%s' is also the training split: the images are not held out "
                       "(set eval.eval_split, e.g. data.split 'train[:90%%]' and eval.eval_split 'train[90%%:]')",
                       split, dcfg.dataset)
    if dcfg.image_column not in ds.column_names:
        raise DataError(f"eval: dataset '{dcfg.dataset}' has no column '{dcfg.image_column}' "
                        f"(columns: {', '.join(ds.column_names)})")
    label_col = cfg.eval.label_column if cfg.eval.label_column in ds.column_names else None
    named = names_from_column(ds, label_col) if label_col else None  # metadata's class_name, as evaluate reads it
    if isinstance(ds.features[dcfg.image_column], datasets.Image):
        ds = ds.cast_column(dcfg.image_column, datasets.Image(decode=False))
    ds = ds.shuffle(seed=cfg.seed).select(range(min(cfg.eval.num_samples, len(ds))))
    images, labels = [], []
    for example in ds:
        try:
            images.append(to_tensor(geometry(to_rgb(open_image(example[dcfg.image_column])))))
        except (*DECODE_ERRORS, ImageModeError) as err:
            logger.warning("eval: skipping unreadable image: %s", err)
            continue
        if label_col:
            labels.append(example[label_col])
    if not images:
        raise DataError(f"eval: no readable images in '{dcfg.dataset}' split '{split}'")
    feature = named or (ds.features[label_col] if label_col else None)
    return torch.stack(images), labels if label_col else None, feature, split


def _folder_classnames(cfg: TrainConfig) -> Optional[Path]:
    """``classnames.txt`` (one name per line, in label order) of a local eval folder, when it has one."""
    dcfg = _eval_data_config(cfg)
    for folder in (dcfg.data_dir, dcfg.dataset):
        if folder and (Path(folder).expanduser() / "classnames.txt").is_file():
            return Path(folder).expanduser() / "classnames.txt"
    return None


def _zero_shot(cfg: TrainConfig, encoder: ImageEncoder, raw_labels: Optional[list], feature
               ) -> tuple[Optional[Tensor], Optional[Tensor], float, str]:
    """Labels as class indices, zero-shot class weights and logit scale, or (None, None, 0, why not).

    Raises :class:`EvaluationError` where ``aft-hf evaluate`` does: a label with no class name."""
    from .evaluate.classnames import imagenet_classnames, names_from_feature, names_order_problem, read_names_file
    from .evaluate.zeroshot import label_indices

    if not encoder.base_is_full_clip:
        return None, None, 0.0, "the base has no text tower (not a full CLIPModel)"
    if cfg.model.embedding != "pooled":
        return None, None, 0.0, "model.embedding is patch_tokens (zero-shot needs the projected embedding)"
    if raw_labels is None:
        return None, None, 0.0, f"the eval data has no '{cfg.eval.label_column}' column"
    source = cfg.eval.class_names
    names = (imagenet_classnames() if source == "imagenet" else read_names_file(source) if source
             else names_from_feature(feature))
    if source and source != "imagenet" and (problem := names_order_problem(names, feature, "eval.class_names")):
        raise EvaluationError(f"eval: {problem}")
    beside = _folder_classnames(cfg) if names is None and not source else None
    if beside is not None:  # a local folder that names its classes (`aft-hf world sample`, clip_benchmark's layout)
        names, source = read_names_file(str(beside)), str(beside)
    by_name = bool(raw_labels) and all(isinstance(v, str) for v in raw_labels)
    if names is None and not by_name:
        return None, None, 0.0, (f"'{cfg.eval.label_column}' is not a ClassLabel: set eval.class_names "
                                 "(a file with one name per line, or imagenet)")
    try:
        labels, names = label_indices(raw_labels, names)
    except EvaluationError as e:
        raise EvaluationError(f"eval: {e} (eval.class_names: {source or 'from the labels'})") from None
    from .explain.targets import load_text_tower

    text = load_text_tower(cfg.model.name_or_path, cfg.model.revision)
    return labels, text.class_embeddings(names), text.logit_scale, ""


class TrainEvaluator:
    """Holds the held-out images and zero-shot weights; :meth:`run` measures the current encoder."""

    def __init__(self, cfg: TrainConfig, encoder: ImageEncoder, frozen: ImageEncoder):
        self.cfg, self.frozen = cfg, frozen
        self.images, raw_labels, feature, self.split = load_eval_images(cfg, image_geometry(encoder))
        self.labels, self.class_weights, self.logit_scale, why = _zero_shot(cfg, encoder, raw_labels, feature)
        self.history: list[dict] = []
        logger.info("eval: %d images (split '%s') every %d steps: %s", len(self.images), self.split,
                    cfg.eval.every_steps, "embedding distance and zero-shot accuracy" if why == "" else
                    f"embedding distance only, no zero-shot accuracy because {why}")

    def due(self, step: int) -> bool:
        return step % self.cfg.eval.every_steps == 0 or step == self.cfg.optim.max_steps

    @torch.no_grad()
    def _distance(self, encoder: ImageEncoder, device: torch.device) -> float:
        total, bs = 0.0, self.cfg.eval.eval_batch_size
        for s in range(0, len(self.images), bs):
            x = self.images[s:s + bs].to(device)
            total += embedding_distance(encoder(x), self.frozen(x)).sum().item()
        return total / len(self.images)

    def measure(self, encoder: ImageEncoder, device: torch.device) -> dict[str, float]:
        """The metrics of the module docstring for ``encoder`` (left in the mode it was in)."""
        from .evaluate.apgd import APGDSpeed
        from .evaluate.zeroshot import ZeroShotClassifier, robust_accuracy, zero_shot_accuracy

        was_training = encoder.training
        encoder.eval()
        try:
            metrics = {"eval/clean_distance": self._distance(encoder, device)}
            if self.class_weights is not None:
                classifier = ZeroShotClassifier(encoder, self.class_weights.to(device), self.logit_scale)
                bs = self.cfg.eval.eval_batch_size
                metrics["eval/zeroshot_top1"] = zero_shot_accuracy(classifier, self.images, self.labels, (1,), bs,
                                                                    progress=False)["top1"]
                if self.cfg.eval.robust_eps:
                    speed = APGDSpeed.from_mixed_precision(self.cfg.optim.mixed_precision, device)
                    robust = robust_accuracy(classifier, self.images, self.labels, self.cfg.eval.robust_eps,
                                             steps=self.cfg.eval.attack_steps, batch_size=bs, seed=self.cfg.seed,
                                             progress=False, attack=EVAL_ATTACK, speed=speed)
                    metrics.update({f"eval/robust_top1_eps{k.split('/')[0]}": v for k, v in robust.items()})
        finally:
            encoder.train(was_training)
        return metrics

    def run(self, accelerator, encoder: ImageEncoder, step: int) -> None:
        """Measure on the main process, log to the trackers, keep in :attr:`history`; others wait."""
        if accelerator.is_main_process:
            metrics = self.measure(encoder, accelerator.device)
            accelerator.log(metrics, step=step)
            self.history.append({"step": step, **metrics})
            logger.info("eval at step %d: %s", step, ", ".join(f"{k[5:]} {v:.4g}" for k, v in metrics.items()))
        accelerator.wait_for_everyone()

    def summary(self) -> dict:
        """For train_summary.json: every evaluation, and the last one as ``eval``."""
        return {"eval": self.history[-1] if self.history else None, "eval_history": self.history}


def build_evaluator(cfg: TrainConfig, encoder: ImageEncoder, frozen: ImageEncoder) -> Optional[TrainEvaluator]:
    """None when ``eval.every_steps`` is 0/null. Built on every process, so a data error stops them all."""
    if not cfg.eval.every_steps:
        return None
    return TrainEvaluator(cfg, encoder, frozen)
