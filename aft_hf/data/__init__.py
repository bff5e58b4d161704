"""Data: images from `datasets` (Hub, streaming, imagefolder), decoded robustly, preprocessed without normalisation."""

from .images import load_images, preprocess, resize_center_crop, to_rgb, to_tensor
from .loading import DataError, build_dataloader, load_image_dataset
from .synthetic import write_shapes_imagefolder

__all__ = [
    "DataError", "build_dataloader", "load_image_dataset", "load_images", "preprocess",
    "resize_center_crop", "to_rgb", "to_tensor", "write_shapes_imagefolder",
]
