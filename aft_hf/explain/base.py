"""The shared machinery of every attribution method, and the registry that names them.

A method is a subclass of :class:`AttributionMethod` that implements :meth:`~AttributionMethod.raw_maps`
for one batch and is registered with :func:`register_method`; input checks, target handling,
batching, eval mode and post-processing live here, once. Adding a method touches one file::

    @register_method
    class MyMethod(AttributionMethod):
        name = "my_method"
        options = {"strength": 1.0}          # method-specific keyword arguments and their defaults

        def raw_maps(self, images, targets):  # (b, 3, H, W) pixels in [0, 1] -> (b, C, H, W)
            ...

    Explainer(encoder, "my_method", strength=2.0).attribute(images, target=text_embeddings)
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, ClassVar, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..registry import Registry
from .targets import ExplainError, as_target

METHODS: Registry = Registry("attribution method", ExplainError)
"""The registry: canonical method name -> method class, in registration order; :func:`resolve_method` also
accepts each class's ``aliases``."""
register_method = METHODS.register
available_methods = METHODS.names


def method_label(name: str) -> str:
    """Display name of a method for figures and reports (an alias reads as its method; ``name`` itself when it is
    not registered)."""
    try:
        key = METHODS.resolve(name)
    except ExplainError:
        return name
    return METHODS[key].label or key


def resolve_method(name: str) -> str:
    """Canonical method name (aliases and ``-``/``_`` spellings accepted); unknown names raise :class:`ExplainError`."""
    return METHODS.resolve(name)


# --------------------------------------------------------------------------- input checks and post-processing


def check_images(images: Union[Tensor, Sequence[Tensor]], image_size: Optional[int] = None) -> Tensor:
    """Validate pixels for attribution: (B, 3, H, W) float in [0, 1].

    A list of (C, H, W) tensors is stacked (mixed sizes are refused: resize with
    ``aft_hf.data.load_images``); grayscale (1 channel) is repeated to RGB.
    """
    if isinstance(images, (list, tuple)):
        sizes = sorted({tuple(t.shape[-2:]) for t in images})
        if len(sizes) > 1:
            raise ExplainError(f"images have mixed sizes {sizes}; resize them to the model's size first "
                               "(aft_hf.data.load_images does resize + centre crop)")
        images = torch.stack([t if t.dim() == 3 else t.unsqueeze(0) for t in images])
    if not torch.is_tensor(images):
        raise ExplainError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ExplainError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ExplainError(f"images must have 1 (grayscale) or 3 (RGB) channels; got {images.shape[1]}")
    images = images.float()
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ExplainError(f"{int((~torch.isfinite(images)).sum())} pixel values are NaN or infinite: pixels must be "
                           "finite values in [0, 1]")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ExplainError(f"pixels must be in [0, 1] (range {images.min().item():.3g}..{images.max().item():.3g}); "
                           "pass un-normalised images (divide 8-bit data by 255)")
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        raise ExplainError(f"images are {tuple(images.shape[-2:])} but the model expects {image_size}x{image_size}")
    return images


def postprocess(maps: Tensor, absolute: bool = True, clip_percentile: Optional[float] = 99.0,
                minmax: bool = True) -> Tensor:
    """The standard saliency post-processing: |.|, sum over channels, clip at a per-image percentile, min-max.

    (B, C, H, W) -> (B, 1, H, W). Each step can be switched off; a constant map becomes zeros.
    """
    maps = maps.detach().float()
    if absolute:
        maps = maps.abs()
    maps = maps.sum(dim=1, keepdim=True)
    flat = maps.flatten(1)
    if clip_percentile is not None and clip_percentile < 100:
        hi = torch.quantile(flat, clip_percentile / 100.0, dim=1, keepdim=True)
        flat = torch.minimum(flat, hi)
    if minmax:
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return flat.view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (B, 1, h, w) patch-grid maps to the image size."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- hooks and model modes


@contextlib.contextmanager
def forward_hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    """``module.register_forward_hook(hook)`` for the duration of a ``with`` block (removed on errors too)."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def eager_attention(vision: nn.Module) -> Iterator[None]:
    """Switch a transformers model to eager attention (SDPA returns no weights) and back."""
    previous = getattr(vision.config, "_attn_implementation", None)
    if previous == "eager" or not hasattr(vision, "set_attn_implementation"):
        yield
        return
    vision.set_attn_implementation("eager")
    try:
        yield
    finally:
        vision.set_attn_implementation(previous)


class SimilarityForward(nn.Module):
    """captum-facing forward: (images, targets) -> cos(f^(x), t^) per image (a tensor, shape (B,))."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        """cos(f^(images), targets) per image, shape (B,); ``targets`` (B, D) are already L2-normalised."""
        embeds = F.normalize(self.encoder(images).float(), dim=-1)
        if embeds.shape[-1] != targets.shape[-1]:
            raise ExplainError(f"target embeddings have dimension {targets.shape[-1]} but the model's embeddings have "
                               f"{embeds.shape[-1]}: use the text tower (or reference image) of the same CLIP")
        return (embeds * targets.to(embeds.dtype)).sum(dim=-1)


# --------------------------------------------------------------------------- the base class


class AttributionMethod(abc.ABC):
    """One attribution method bound to an encoder: ``attribute(images, target) -> (B, 1, H, W)``.

    Subclasses set ``name`` (and optionally ``aliases``, ``needs_target``, ``needs_vit``, ``options``)
    and implement :meth:`raw_maps`; this class checks the input, broadcasts and normalises the
    target, runs the encoder in eval mode over batches of ``batch_size``, and post-processes.

    Args:
        encoder: pixels in [0, 1] -> embedding (an :class:`aft_hf.model.ImageEncoder` for ViT methods).
        postprocess: apply |.|, percentile clip and min-max; otherwise only sum over channels.
        batch_size: images per internal batch (a progress bar runs over batches when there are several).
        clip_percentile: the per-image percentile at which post-processing clips (``None``: no clip).
        minmax: with ``postprocess``, min-max scale each map. ``postprocess=True, clip_percentile=None,
            minmax=False`` gives the raw map the metrics score: |attribution| summed over channels.
        **options: the method's own settings (keys of its ``options``).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    """Display name in figures and reports (default: ``name``)."""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs_target: ClassVar[bool] = True
    """False for class-agnostic methods (they ignore ``target``)."""
    needs_vit: ClassVar[bool] = False
    """True when the method reads the ViT inside the encoder (``encoder.vision``)."""
    options: ClassVar[dict[str, Any]] = {}
    """Method-specific keyword arguments and their defaults."""

    def __init__(self, encoder: nn.Module, postprocess: bool = True, batch_size: int = 8,
                 clip_percentile: Optional[float] = 99.0, progress: bool = True, minmax: bool = True,
                 **options: Any):
        if batch_size < 1:
            raise ExplainError(f"batch_size must be >= 1, got {batch_size}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ExplainError(f"method '{self.name}' has no option(s) {unknown} "
                               f"(its options: {', '.join(self.options) or 'none'})")
        if self.needs_vit and not hasattr(encoder, "vision"):
            raise ExplainError(f"method '{self.name}' needs a ViT image encoder with a `.vision` model "
                               "(aft_hf.model.load_image_encoder)")
        self.encoder, self.postprocess, self.batch_size = encoder, postprocess, batch_size
        self.clip_percentile, self.progress, self.minmax = clip_percentile, progress, minmax
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))

    @abc.abstractmethod
    def raw_maps(self, images: Tensor, targets: Optional[Tensor]) -> Tensor:
        """Attributions (b, C, H, W) for one batch on the encoder's device (``targets`` (b, D) or None);
        the one function each method defines."""

    def finish(self, raw: Tensor) -> Tensor:
        """(b, C, H, W) -> (b, 1, H, W): the standard post-processing, or only the channel sum."""
        if self.postprocess:
            return postprocess(raw, True, self.clip_percentile, self.minmax)
        return raw.sum(dim=1, keepdim=True)

    def attribute(self, images: Union[Tensor, Sequence[Tensor]], target: Optional[Tensor] = None) -> Tensor:
        """Maps (B, 1, H, W) for ``images`` in [0, 1]; ``target``: embeddings (D,), (1, D) or (B, D)."""
        size = getattr(self.encoder, "image_size", None)
        images = check_images(images, size if isinstance(size, int) else None)
        device = next(self.encoder.parameters()).device
        images = images.to(device)
        targets = None
        if self.needs_target:
            if target is None:
                raise ExplainError(f"method '{self.name}' explains a similarity: pass target= (text or image embeddings)")
            targets = as_target(target, images.shape[0]).to(device)
        was_training = self.encoder.training
        self.encoder.eval()
        chunks = range(0, images.shape[0], self.batch_size)
        out = []
        try:
            for start in tqdm(chunks, desc=self.name, disable=not self.progress or len(chunks) <= 1, leave=False):
                sl = slice(start, start + self.batch_size)
                out.append(self.finish(self.raw_maps(images[sl], None if targets is None else targets[sl])))
        finally:
            self.encoder.train(was_training)
        return torch.cat(out)

    __call__ = attribute
