"""Class names and prompt templates for zero-shot classification.

Sources, in order of preference: a names file (one class per line), the dataset's ``ClassLabel``
feature, or the cleaned ImageNet-1k names shipped in ``aft_hf/resources`` (ImageNet's raw WordNet
synsets such as "crane" twice or "maillot, tank suit" make poor prompts). Templates: the 80 prompt
templates commonly used for CLIP on ImageNet (``clip80``), the single ``simple`` template, a file,
or templates given inline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from ..explain.targets import ExplainError, check_template

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


def names_from_feature(feature) -> Optional[list[str]]:
    """Readable names from a ``datasets.ClassLabel`` (underscores to spaces; 1000 ImageNet classes -> cleaned)."""
    import datasets

    if not isinstance(feature, datasets.ClassLabel):
        return None
    names = list(feature.names)
    if len(names) == 1000:
        return imagenet_classnames()
    return [n.replace("_", " ").split(",")[0].strip() for n in names]


def resolve_classnames(names_file: Optional[str] = None, feature=None, imagenet: bool = False) -> list[str]:
    """Class names from a file, a ClassLabel feature, or the shipped ImageNet list (see module docstring)."""
    if names_file:
        return read_names_file(names_file)
    if imagenet:
        return imagenet_classnames()
    names = names_from_feature(feature) if feature is not None else None
    if names is None:
        raise ExplainError("no class names: the label column is not a ClassLabel; pass --class-names FILE "
                           "(one name per line) or --imagenet-classnames")
    return names


def resolve_templates(spec: Union[None, str, Sequence[str]] = None) -> list[str]:
    """``None``/``"simple"`` -> one template; ``"clip80"`` -> the 80 CLIP templates; a file; or a list."""
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
