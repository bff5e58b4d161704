"""Zero-shot accuracy of a world CLIP on held-out world images (overall, colour and shape).

Zero-shot accuracy = argmax over the class captions of the cosine similarity of L2-normalised
embeddings (the package's one zero-shot classifier, :mod:`aft_hf.evaluate.zeroshot`, with the
caption itself as the only template); colour and shape accuracy score the two words of the
predicted caption separately.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import normalize_pixels
from .dataset import WorldConfig, WorldError, generate_arrays


def to_pixel_values(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 -> CLIP-normalised (N, 3, H, W) float, exactly as ``ImageEncoder`` does."""
    return normalize_pixels(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)


def _features(out) -> Tensor:
    # transformers returns a tensor or (newer versions) an output object from get_*_features
    return out.pooler_output if hasattr(out, "pooler_output") else out


def class_text_embeddings(model, tokenizer, captions: list[str]) -> Tensor:
    """L2-normalised text embeddings of ``captions`` (K, D)."""
    tok = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    return F.normalize(_features(out), dim=-1)


def image_embeddings(model, pixel_values: Tensor) -> Tensor:
    """L2-normalised image embeddings (N, D) of CLIP-normalised pixels."""
    return F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)


@torch.no_grad()
def zero_shot_predict(model, tokenizer, images: np.ndarray, world: WorldConfig, batch_size: int = 256) -> np.ndarray:
    """Predicted class index of each (N, H, W, 3) uint8 image: argmax cosine over the class captions."""
    from ..evaluate.zeroshot import ZeroShotClassifier, predict
    from ..explain.targets import TextTower

    if not len(images):
        return np.empty(0, np.int64)
    was_training = model.training
    model.eval()
    try:
        classifier = ZeroShotClassifier.from_text(
            lambda pixels: _features(model.get_image_features(pixel_values=normalize_pixels(pixels))),
            TextTower(model, tokenizer, frozen=False), world.captions, ("{}",))
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        preds = predict(classifier, pixels, batch_size, progress=False).argmax(-1).numpy()
    finally:
        model.train(was_training)
    return preds


def accuracies(preds: np.ndarray, labels: np.ndarray, world: WorldConfig) -> dict[str, float]:
    """Overall, colour and shape accuracy (colour = label // n_shapes, shape = label % n_shapes)."""
    n_shapes = len(world.shapes)
    preds, labels = np.asarray(preds), np.asarray(labels)
    return {"accuracy": float(np.mean(preds == labels)),
            "colour_accuracy": float(np.mean(preds // n_shapes == labels // n_shapes)),
            "shape_accuracy": float(np.mean(preds % n_shapes == labels % n_shapes))}


def evaluate_zero_shot(model, tokenizer, world: WorldConfig, num_images: int = 1000, seed: int = 1) -> dict[str, float]:
    """Zero-shot accuracies on ``num_images`` (>= 1) held-out images of world seed ``seed``."""
    if num_images < 1:
        raise WorldError(f"the number of evaluation images must be >= 1, got {num_images}")
    data = generate_arrays(num_images, seed, world)
    res = accuracies(zero_shot_predict(model, tokenizer, data["images"], world), data["labels"], world)
    res["num_images"] = num_images
    return res
