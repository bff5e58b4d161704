"""A ground-truth world for saliency: synthetic captioned images with target masks, and a small CLIP
pretrained in it (shipped under ``aft_hf/world/base``, loadable as ``builtin:world-clip``).

    from aft_hf.world import make_dataset, load_world_clip, BASE_DIR
    ds = make_dataset(200, seed=2)                # image, mask, caption, label
    model, tokenizer, cfg = load_world_clip()      # the shipped base CLIPModel and its settings

Modules: ``dataset`` (rendering), ``config`` (pretraining settings), ``pretrain`` (the contrastive
loop), ``zeroshot`` (evaluation), ``storage`` (world CLIP folders), ``checksums``; the
``aft-hf world`` command is :mod:`aft_hf.commands.world`.
"""

from .checksums import CHECKSUM_FILE, verify_checksums, write_checksums
from .config import PretrainConfig, build_clip_config
from .dataset import (
                      CAPTION_TEMPLATE,
                      COLOURS,
                      DISTRACTOR_COLOURS,
                      DISTRACTOR_SHAPES,
                      SHAPES,
                      WorldConfig,
                      WorldError,
                      WorldSample,
                      generate_arrays,
                      load_imagefolder,
                      make_dataset,
                      mask_array,
                      render_sample,
                      sample_iter,
                      write_imagefolder,
)
from .pretrain import contrastive_loss, pretrain
from .storage import BASE_DIR, load_training_record, load_world_clip, load_world_config, save_world_clip
from .zeroshot import (
                      accuracies,
                      class_text_embeddings,
                      evaluate_zero_shot,
                      image_embeddings,
                      to_pixel_values,
                      zero_shot_predict,
)

__all__ = [
    "CAPTION_TEMPLATE", "CHECKSUM_FILE", "COLOURS", "DISTRACTOR_COLOURS", "DISTRACTOR_SHAPES", "SHAPES", "WorldConfig",
    "WorldError", "WorldSample", "generate_arrays", "load_imagefolder", "make_dataset", "mask_array", "render_sample",
    "sample_iter", "write_imagefolder", "BASE_DIR", "PretrainConfig", "accuracies", "build_clip_config",
    "class_text_embeddings", "contrastive_loss", "evaluate_zero_shot", "image_embeddings", "load_training_record",
    "load_world_clip", "load_world_config", "pretrain", "save_world_clip", "to_pixel_values", "verify_checksums",
    "write_checksums", "zero_shot_predict",
]
