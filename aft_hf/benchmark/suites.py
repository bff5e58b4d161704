"""The named benchmark suites: which datasets, under which Hub ids, with how many attacked images.

``robustvlm13`` is the zero-shot suite of the robust-CLIP literature (Schlarmann et al. 2024, FARE /
RobustVLM; Mao et al. 2023, TeCoA): the 13 datasets of RobustVLM's ``CLIP_benchmark/benchmark/datasets.txt``
(``wds/vtab/cifar10``, ``wds/stl10``, ...), which clip_benchmark reads from
``https://huggingface.co/datasets/clip-benchmark/wds_{name with '/' -> '-'}``; hence ``wds_vtab-cifar10``,
not ``wds_cifar10``. ``imagenet1k`` is ImageNet's validation set as the same project publishes it, attacked
on its first 5000 images. Suites are data: add one to :data:`SUITES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import BenchmarkError

HUB_OWNER = "clip-benchmark"
PROTOCOL_ROBUST_IMAGES = 1000
"""Images attacked per dataset in the protocol (the first ones of the test split)."""


@dataclass(frozen=True)
class SuiteDataset:
    """One dataset of a suite: its short name, its Hub id and the protocol's robust sample size."""

    name: str
    hub_id: str
    robust_images: int = PROTOCOL_ROBUST_IMAGES
    in_average: bool = True
    """Part of the suite's average (ImageNet is reported beside the 13-dataset average, not in it)."""
    classes: Optional[int] = None
    """Its number of classes (``classnames.txt`` lines), where known: a local copy with another count is no copy
    of it, and its numbers are not published as the protocol's."""


def _wds(name: str, wds_name: str, **kw) -> SuiteDataset:
    return SuiteDataset(name, f"{HUB_OWNER}/wds_{wds_name}", **kw)


SUITES: dict[str, tuple[SuiteDataset, ...]] = {
    "robustvlm13": (
        _wds("cifar10", "vtab-cifar10", classes=10), _wds("stl10", "stl10", classes=10),
        _wds("cifar100", "vtab-cifar100", classes=100), _wds("cars", "cars", classes=196),
        _wds("caltech101", "vtab-caltech101"), _wds("pets", "vtab-pets", classes=37),
        _wds("flowers", "vtab-flowers", classes=102), _wds("dtd", "vtab-dtd", classes=47),
        _wds("eurosat", "vtab-eurosat", classes=10), _wds("fgvc_aircraft", "fgvc_aircraft", classes=100),
        _wds("pcam", "vtab-pcam", classes=2), _wds("imagenet-r", "imagenet-r", classes=200),
        _wds("imagenet_sketch", "imagenet_sketch", classes=1000),
    ),
    "imagenet1k": (_wds("imagenet1k", "imagenet1k", robust_images=5000, in_average=False, classes=1000),),
}
"""Suite name -> datasets, in the order the field's tables list them."""


def suite_datasets(names: list[str]) -> list[SuiteDataset]:
    """The datasets of the named suites, in order, each once; an unknown name is a one-line error."""
    out: list[SuiteDataset] = []
    for name in names:
        if name not in SUITES:
            raise BenchmarkError(f"unknown suite '{name}' (choose from {', '.join(SUITES)})")
        out += [d for d in SUITES[name] if d not in out]
    return out


def known_dataset(hub_id: str) -> Optional[SuiteDataset]:
    """The suite entry of a Hub id given by hand (so ImageNet keeps its 5000 robust images), else None."""
    return next((d for datasets in SUITES.values() for d in datasets if d.hub_id == hub_id), None)


__all__ = ["HUB_OWNER", "PROTOCOL_ROBUST_IMAGES", "SUITES", "SuiteDataset", "known_dataset", "suite_datasets"]
