"""Class names and prompt templates for zero-shot classification.

Sources, in order of preference: a names file (one class per line), the dataset's ``ClassLabel``
feature, or the cleaned ImageNet-1k names shipped in ``aft_hf/resources`` (ImageNet's raw WordNet
synsets such as "crane" twice or "maillot, tank suit" make poor prompts). Templates: the 80 prompt
templates commonly used for CLIP on ImageNet (``clip80``), the single ``simple`` template, a file,
or templates given inline.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from ..explain.targets import ExplainError, check_template

logger = logging.getLogger(__name__)

SIMPLE_TEMPLATES = ("a photo of a {}.",)


def _resource_lines(name: str) -> list[str]:
    text = resources.files("aft_hf").joinpath("resources", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_classnames() -> list[str]:
    """The 1000 cleaned ImageNet-1k class names, in label-index order."""
    return _resource_lines("imagenet_classnames.txt")


def clip_templates() -> list[str]:
    """The 80 prompt templates commonly used for CLIP zero-shot ImageNet classification."""
    return _resource_lines("clip_templates.txt")


def read_names_file(path: Union[str, Path]) -> list[str]:
    """One class name per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise ExplainError(f"class names file '{path}' does not exist")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ExplainError(f"class names file '{path}' is empty")
    return names


IMAGENET_1K_MARKERS = {0: ("tench", "n01440764"), 1: ("goldfish", "n01443537"),
                       999: ("toilet tissue", "toilet paper", "n15075141")}
"""What ImageNet-1k's classes 0, 1 and 999 are called, as raw WordNet names ("tench, Tinca tinca"), the shipped
cleaned names or WordNet ids: enough to tell ImageNet's 1000 classes, in ImageNet's order, from any other list of
1000 names."""


def _first_name(name: str) -> str:
    return name.replace("_", " ").split(",")[0].strip().lower()


def is_imagenet_1k(names: Sequence[str]) -> bool:
    """``names`` are ImageNet-1k's classes in ImageNet's label order (see :data:`IMAGENET_1K_MARKERS`)."""
    return len(names) == 1000 and all(_first_name(names[i]) in known for i, known in IMAGENET_1K_MARKERS.items())


def names_from_feature(feature) -> Optional[list[str]]:
    """Readable names from a ``datasets.ClassLabel``: underscores to spaces, the first of comma-separated synonyms;
    ImageNet-1k's own classes (:func:`is_imagenet_1k`), or 1000 classes named by number only, become the shipped
    cleaned names. Any other 1000-class dataset keeps its own names."""
    import datasets

    if not isinstance(feature, datasets.ClassLabel):
        return None
    names = list(feature.names)
    if is_imagenet_1k(names):
        return imagenet_classnames()
    if names == [str(i) for i in range(1000)]:  # numbers only, as some ImageNet mirrors store them
        logger.warning("the 1000 classes are named by number only: taking them as ImageNet-1k's, in its order (give "
                       "--class-names / eval.class_names for another data set)")
        return imagenet_classnames()
    return [n.replace("_", " ").split(",")[0].strip() for n in names]


def _comparable(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def names_order_problem(names: Sequence[str], feature, option: str = "--class-names") -> Optional[str]:
    """Why names given for a labelled data set (``option``: where they came from) cannot be its classes' names:
    another count than its ``ClassLabel`` has, or the ``ClassLabel``'s own names in another order (zero-shot
    would score every image against another class's name: 0% on a perfect model, silently). None when they fit
    (other names in the same count, e.g. readable names for WordNet ids, are the point of a names file)."""
    import datasets

    if not isinstance(feature, datasets.ClassLabel):
        return None
    if len(names) != feature.num_classes:
        return f"{option} gives {len(names)} names but the label column has {feature.num_classes} classes"
    own = [_comparable(n) for n in feature.names]
    given = [_comparable(n) for n in names]
    if given != own and sorted(given) == sorted(own):
        first = next(i for i, (a, b) in enumerate(zip(own, given)) if a != b)
        return (f"{option} lists the data set's own class names in another order (label {first} is "
                f"'{feature.names[first]}' in the data set, '{names[first]}' in the file): every image would be scored "
                "against another class's name; put the names in label order, or leave the option out to use the "
                "data set's names")
    return None


def resolve_classnames(names_file: Optional[str] = None, feature=None, imagenet: bool = False) -> list[str]:
    """Class names from a file, a ClassLabel feature, or the shipped ImageNet list (see module docstring); a file that
    does not fit the ClassLabel (:func:`names_order_problem`) is refused."""
    if names_file:
        names = read_names_file(names_file)
        if problem := names_order_problem(names, feature):
            raise ExplainError(problem)
        return names
    if imagenet:
        return imagenet_classnames()
    names = names_from_feature(feature) if feature is not None else None
    if names is None:
        raise ExplainError("no class names: the label column is not a ClassLabel, and no class_name column names "
                           "every label 0..max once; pass --class-names FILE (one name per line, in label order) or "
                           "--imagenet-classnames")
    return names


def resolve_templates(spec: Union[None, str, Sequence[str]] = None, names: Optional[Sequence[str]] = None
                      ) -> list[str]:
    """``"simple"`` -> one template; ``"clip80"`` -> the 80 CLIP templates; a file; or a list. ``None``: clip80
    for ImageNet-1k's classes (``names``, :func:`is_imagenet_1k`), where CLIP's authors tuned them, else simple."""
    if spec is None and names is not None and is_imagenet_1k(names):
        spec = "clip80"
    if spec is None or spec == "simple":
        templates = list(SIMPLE_TEMPLATES)
    elif spec == "clip80":
        templates = clip_templates()
    elif isinstance(spec, str) and Path(spec).is_file():
        templates = [t.strip() for t in Path(spec).read_text(encoding="utf-8").splitlines() if t.strip()]
    elif isinstance(spec, str):
        templates = [spec]
    else:
        templates = list(spec)
    if not templates:
        raise ExplainError("no prompt templates given")
    return [check_template(t) for t in templates]
