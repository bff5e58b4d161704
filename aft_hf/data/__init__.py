"""Data: images from `datasets` (Hub, streaming, local folders of any form), decoded defensively,
preprocessed without normalisation."""

from .errors import DataError, UnknownDatasetError
from .images import (
                     ImageGeometry,
                     ImageLimits,
                     ImageRejected,
                     image_geometry,
                     load_images,
                     load_readable_images,
                     open_image,
                     preprocess,
                     resize_center_crop,
                     to_rgb,
                     to_tensor,
)
from .loading import (
                     EpochSampler,
                     build_dataloader,
                     epoch_position,
                     load_image_dataset,
                     resume_position,
                     stream_positions,
)
from .quality import BadSamples
from .sources import check_source, load_source
from .synthetic import write_shapes_imagefolder
from .watch import watch_stalls

__all__ = [
    "BadSamples", "DataError", "EpochSampler", "ImageGeometry", "ImageLimits", "ImageRejected",
    "UnknownDatasetError", "build_dataloader", "epoch_position", "image_geometry", "load_image_dataset",
    "load_images", "load_readable_images", "check_source", "load_source", "open_image", "preprocess", "resize_center_crop",
    "resume_position", "stream_positions", "to_rgb", "to_tensor", "watch_stalls", "write_shapes_imagefolder",
]
