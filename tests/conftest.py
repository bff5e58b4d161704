"""Shared fixtures: a tiny CLIP saved with save_pretrained and small image sets made on the fly.

Everything runs offline; the aft_hf cache (builtin models and data) goes to a temporary folder.
Fixtures live here (or in a sub-folder's conftest.py), helpers in ``tests/*_helpers.py``: no test module
imports another (tests/test_layout.py checks it).
"""

import enum
import importlib.util
import os
import sys
import tempfile
import types

# Forced, not defaulted: a shell with HF_HUB_OFFLINE=0 must not let the tests reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# torch.compile's on-disk cache does not key on the instruction sets forced by these variables: a kernel compiled in
# a native run, reused in a run with AVX2 forced on the same machine, gave NaN (measured 2026-12-06). Each forced
# setting gets its own cache folder (unless one is set), so the two runs of the suite never share compiled code.
_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
if any(os.environ.get(v) for v in _ISA_VARIABLES) and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _isa = "-".join(os.environ.get(v, "native") for v in _ISA_VARIABLES).lower()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_aft_hf_{_isa}")

import pytest  # noqa: E402 (after the environment above)
import torch  # noqa: E402

from tests.image_helpers import write_png_folder  # noqa: E402


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


# open_clip_torch is installed without its dependencies (``pip install --no-deps open_clip_torch ftfy``):
# torchvision cannot sit beside the CPU torch here, and open_clip imports a few torchvision names at import time
# for its image transforms, which the tests do not use. The stub provides only those names.
def _torchvision_stub() -> dict:
    """torchvision, .transforms, .transforms.functional, .ops, .ops.misc with the names open_clip imports."""

    class _Transform:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stub: image transforms are not available in these tests")

    mods = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.transforms",
                                                      "torchvision.transforms.functional", "torchvision.ops",
                                                      "torchvision.ops.misc")}
    tr = mods["torchvision.transforms"]
    for name in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter",
                 "Grayscale"):
        setattr(tr, name, type(name, (_Transform,), {}))
    tr.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
    tr.functional = mods["torchvision.transforms.functional"]
    mods["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    mods["torchvision"].transforms, mods["torchvision"].ops = tr, mods["torchvision.ops"]
    mods["torchvision.ops"].misc = mods["torchvision.ops.misc"]
    return mods


@pytest.fixture(scope="module")
def open_clip():
    """The real open_clip; the stub is in sys.modules only while open_clip is imported (other libraries
    probe for torchvision and must keep seeing that it is absent)."""
    # A missing package is a failure, not a skip: the README's test command installs it (without its
    # torchvision requirement), and a skip would hide that the open_clip round trip went untested.
    for name in ("ftfy", "open_clip"):
        if importlib.util.find_spec(name) is None:
            pytest.fail(f"{name} is not installed: pip install --no-deps open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth "
                        "(the README's test command does)")
    stub = _torchvision_stub() if importlib.util.find_spec("torchvision") is None else {}
    sys.modules.update(stub)
    try:
        import open_clip as module
    finally:
        for name in stub:
            sys.modules.pop(name, None)
    return module


@pytest.fixture
def class_token_calls(monkeypatch):
    """A list that gets one entry per call of the class-token last layer's short path (``ClassTokenLastLayer``)."""
    from aft_hf.perf import ClassTokenLastLayer

    calls, real = [], ClassTokenLastLayer.forward
    monkeypatch.setattr(ClassTokenLastLayer, "forward", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    return calls
