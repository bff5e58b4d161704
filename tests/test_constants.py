"""Shared constants: CLIP's normalisation is transformers' own, the version is the package's, the world base ships."""

from transformers import CLIPImageProcessor

import aft_hf
from aft_hf.constants import CLIP_MEAN, CLIP_STD, VERSION, WORLD_CLIP_DIR


def test_clip_normalisation_is_the_clip_processors():
    processor = CLIPImageProcessor()
    assert list(CLIP_MEAN) == list(processor.image_mean) and list(CLIP_STD) == list(processor.image_std)


def test_version_and_world_base():
    assert aft_hf.__version__ == VERSION and VERSION.count(".") == 2
    assert (WORLD_CLIP_DIR / "config.json").is_file()
