"""Shared fixtures: a tiny CLIP saved with save_pretrained and small image sets made on the fly.

Everything runs offline; the aft_hf cache (builtin models and data) goes to a temporary folder.
"""

import os

# Forced, not defaulted: a shell with HF_HUB_OFFLINE=0 must not let the tests reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tests.image_helpers import write_png_folder


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Builtin models/datasets and the datasets cache live in a temp dir for the whole session."""
    root = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("AFT_HF_CACHE", "HF_DATASETS_CACHE")}
    os.environ["AFT_HF_CACHE"] = str(root / "aft_hf")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for tiny tensors: thread sync dominates them (10-100x on a shared 2-core CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """A full tiny CLIPModel folder (32 px, patch 8) with its image processor, as from the Hub."""
    from aft_hf.model import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_vision_path(tmp_path_factory, tiny_clip_path):
    """The same model exported as a vision-only CLIPVisionModelWithProjection folder."""
    from aft_hf.model import load_image_encoder

    enc = load_image_encoder(str(tiny_clip_path))
    path = tmp_path_factory.mktemp("tiny_vision") / "model"
    enc.vision.save_pretrained(path)
    enc.image_processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_path):
    from aft_hf.model import load_image_encoder

    return load_image_encoder(str(tiny_clip_path))


@pytest.fixture
def png_folder(tmp_path):
    return write_png_folder(tmp_path / "images", 16)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.rand(4, 3, 32, 32)
