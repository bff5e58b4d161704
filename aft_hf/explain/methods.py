"""Attribution methods for CLIP image encoders, one signature for all:

    maps = Explainer(encoder, "saliency").attribute(images, target=text_embeddings)   # (B, 1, H, W)

``images`` are pixels in [0, 1] (B, 3, H, W); ``target`` holds L2-normalised embeddings (text or
image), shape (D,), (1, D) or (B, D). The explained scalar is cos(f^(x), t^) (METHOD.md section 4),
never a single embedding coordinate. Built on captum where captum has the method:

- ``saliency``: Simple Gradient (captum ``Saliency``), Simonyan et al. 2014.
- ``integrated_gradients``: captum ``IntegratedGradients`` from a black image, Sundararajan et al. 2017.
- ``smoothgrad``: captum ``NoiseTunnel`` over ``Saliency``, Smilkov et al. 2017.
- ``gradcam``: captum ``LayerGradCam`` on ViT tokens reshaped to the patch grid, Selvaraju et al. 2017.
- ``attention``: last-layer CLS-to-patch attention averaged over heads (class-agnostic).
- ``rollout``: attention rollout, Abnar & Zuidema 2020 (class-agnostic).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .targets import ExplainError, as_target

GRADIENT_METHODS = ("saliency", "integrated_gradients", "smoothgrad")
METHODS = GRADIENT_METHODS + ("gradcam", "attention", "rollout")
ALIASES = {"ig": "integrated_gradients", "simple_gradient": "saliency", "gradient": "saliency",
           "grad_cam": "gradcam", "attention_rollout": "rollout"}


def resolve_method(name: str) -> str:
    """Canonical method name; unknown names raise :class:`ExplainError` listing the known ones."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ExplainError(f"unknown attribution method '{name}' (choose from {', '.join(METHODS)})")
    return key


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


# --------------------------------------------------------------------------- attention maps


def cls_attention(attentions: Sequence[Tensor]) -> Tensor:
    """Last layer's CLS-to-patch attention averaged over heads: (B, N) from (B, heads, 1+N, 1+N) per layer."""
    return attentions[-1].float().mean(dim=1)[:, 0, 1:]


def attention_rollout(attentions: Sequence[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): CLS-to-patch flow (B, N) through all layers.

    Each layer's head-averaged attention A becomes ``residual * I + (1 - residual) * A`` (the skip
    connection), rows re-normalised; the layers are multiplied from the first to the last.
    """
    rollout = None
    for att in attentions:
        a = att.float().mean(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout[:, 0, 1:]


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


# --------------------------------------------------------------------------- the explainer


class SimilarityForward(nn.Module):
    """captum-facing forward: (images, targets) -> cos(f^(x), t^) per image (a tensor, shape (B,))."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        embeds = F.normalize(self.encoder(images).float(), dim=-1)
        return (embeds * targets.to(embeds.dtype)).sum(dim=-1)


class _TokenGrid(nn.Identity):
    """Carries ViT patch tokens as a (B, D, h, w) grid, so captum's LayerGradCam weights channels D."""


class Explainer:
    """Attribution maps (B, 1, H, W) for a CLIP image encoder (pixels in [0, 1] -> embedding).

    Args:
        encoder: an :class:`aft_hf.model.ImageEncoder` (``gradcam``/``attention``/``rollout`` need
            its ``.vision`` ViT; gradient methods accept any pixels -> embedding module).
        method: one of :data:`METHODS`.
        postprocess: apply |.|, 99th-percentile clip and min-max (channels are always summed).
        minmax: with ``postprocess``, min-max scale each map (``False`` together with
            ``clip_percentile=None`` gives the raw map the metrics score: |attribution| summed over channels).
        batch_size: images per internal batch (a progress bar runs over batches).
        layer: Grad-CAM layer: ``None`` = the last block's ``layer_norm1`` (input of its attention; the
            last block's *output* has zero patch gradients), ``"penultimate"`` = the second-to-last block's
            output, a dotted module path inside ``encoder.vision``, or a module.
        n_steps: Integrated Gradients steps. nt_samples, stdevs: SmoothGrad samples and noise std.
    """

    def __init__(self, encoder: nn.Module, method: str = "saliency", postprocess: bool = True,
                 batch_size: int = 8, layer: Union[None, str, nn.Module] = None, n_steps: int = 32,
                 nt_samples: int = 16, stdevs: float = 0.15, clip_percentile: float = 99.0,
                 progress: bool = True, minmax: bool = True):
        if batch_size < 1:
            raise ExplainError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder, self.method = encoder, resolve_method(method)
        self.postprocess, self.batch_size, self.layer = postprocess, batch_size, layer
        self.n_steps, self.nt_samples, self.stdevs = n_steps, nt_samples, stdevs
        self.clip_percentile, self.progress, self.minmax = clip_percentile, progress, minmax
        if self.method not in GRADIENT_METHODS and not hasattr(encoder, "vision"):
            raise ExplainError(f"method '{self.method}' needs a ViT image encoder with a `.vision` model "
                               "(aft_hf.model.load_image_encoder)")

    @property
    def needs_target(self) -> bool:
        return self.method not in ("attention", "rollout")

    def attribute(self, images: Union[Tensor, Sequence[Tensor]], target: Optional[Tensor] = None) -> Tensor:
        """Maps (B, 1, H, W) for ``images`` in [0, 1]; ``target``: normalised embeddings (attention ignores it)."""
        size = getattr(self.encoder, "image_size", None)
        images = check_images(images, size if isinstance(size, int) else None)
        device = next(self.encoder.parameters()).device
        images = images.to(device)
        targets = None
        if self.needs_target:
            if target is None:
                raise ExplainError(f"method '{self.method}' explains a similarity: pass target= (text or image embeddings)")
            targets = as_target(target, images.shape[0]).to(device)
        was_training = self.encoder.training
        self.encoder.eval()
        chunks = range(0, images.shape[0], self.batch_size)
        out = []
        try:
            for start in tqdm(chunks, desc=self.method, disable=not self.progress or len(chunks) <= 1, leave=False):
                sl = slice(start, start + self.batch_size)
                out.append(self._attribute_batch(images[sl], None if targets is None else targets[sl]))
        finally:
            self.encoder.train(was_training)
        return torch.cat(out)

    __call__ = attribute

    # ------------------------------------------------------------------ per method

    def _attribute_batch(self, images: Tensor, targets: Optional[Tensor]) -> Tensor:
        if self.method in GRADIENT_METHODS:
            raw = self._gradient(images, targets)
            if self.postprocess:
                return postprocess(raw, True, self.clip_percentile, self.minmax)
            return raw.sum(dim=1, keepdim=True)
        if self.method == "gradcam":
            maps = self._gradcam(images, targets)
        else:
            maps = self._attention(images)
        if self.postprocess:
            return postprocess(maps, True, self.clip_percentile, self.minmax)
        return maps

    def _gradient(self, images: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        forward = SimilarityForward(self.encoder)
        inputs = images.clone().requires_grad_(True)
        with torch.enable_grad():
            if self.method == "saliency":
                return Saliency(forward).attribute(inputs, abs=False, additional_forward_args=(targets,)).detach()
            if self.method == "integrated_gradients":
                return IntegratedGradients(forward).attribute(
                    inputs, baselines=torch.zeros_like(inputs), n_steps=self.n_steps,
                    additional_forward_args=(targets,), internal_batch_size=max(self.batch_size, 1) * 4).detach()
            return NoiseTunnel(Saliency(forward)).attribute(
                inputs, nt_type="smoothgrad", nt_samples=self.nt_samples, stdevs=self.stdevs,
                nt_samples_batch_size=self.nt_samples, abs=False, additional_forward_args=(targets,)).detach()

    def grid_shape(self, images: Tensor) -> tuple[int, int]:
        p = self.encoder.patch_size
        return images.shape[-2] // p, images.shape[-1] // p

    def resolve_layer(self) -> nn.Module:
        """The Grad-CAM layer inside ``encoder.vision`` (see ``layer`` in the class docstring)."""
        layers = self.encoder.vision.vision_model.encoder.layers
        if isinstance(self.layer, nn.Module):
            return self.layer
        if self.layer is None or self.layer == "last_ln1":
            return layers[-1].layer_norm1
        if self.layer == "penultimate":
            if len(layers) < 2:
                raise ExplainError("layer 'penultimate' needs a ViT with at least 2 blocks")
            return layers[-2]
        try:
            return self.encoder.vision.get_submodule(self.layer)
        except AttributeError as e:
            raise ExplainError(f"Grad-CAM layer '{self.layer}' not found in the vision model: {e}") from e

    def _gradcam(self, images: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import LayerGradCam

        h, w = self.grid_shape(images)
        grid = _TokenGrid()

        def to_grid(module, inputs, output):
            tokens = output[0] if isinstance(output, tuple) else output
            if tokens.dim() != 3 or tokens.shape[1] != 1 + h * w:
                raise ExplainError(f"Grad-CAM layer output {tuple(tokens.shape)} is not (B, 1+{h * w}, D) ViT tokens")
            cls, patches = tokens[:, :1], tokens[:, 1:]
            b, n, d = patches.shape
            grid_tokens = grid(patches.transpose(1, 2).reshape(b, d, h, w))
            new = torch.cat([cls, grid_tokens.flatten(2).transpose(1, 2)], dim=1)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        handle = self.resolve_layer().register_forward_hook(to_grid)
        try:
            with torch.enable_grad():
                cam = LayerGradCam(SimilarityForward(self.encoder), grid).attribute(
                    images, additional_forward_args=(targets,), relu_attributions=True)
        finally:
            handle.remove()
        return upsample(cam.detach().float(), tuple(images.shape[-2:]))

    @torch.no_grad()
    def _attention(self, images: Tensor) -> Tensor:
        vision = self.encoder.vision
        mean, std = self.encoder.mean.to(images), self.encoder.std.to(images)
        with eager_attention(vision):
            attentions = vision(pixel_values=(images - mean) / std, output_attentions=True).attentions
        if not attentions:
            raise ExplainError("the vision model returned no attention weights (eager attention is required)")
        flow = cls_attention(attentions) if self.method == "attention" else attention_rollout(attentions)
        h, w = self.grid_shape(images)
        return upsample(flow.view(-1, 1, h, w), tuple(images.shape[-2:]))


def explain(encoder: nn.Module, images: Tensor, target: Optional[Tensor], methods: Sequence[str],
            **kwargs) -> dict[str, Tensor]:
    """Maps for several methods at once: {method: (B, 1, H, W)}."""
    return {resolve_method(m): Explainer(encoder, m, **kwargs).attribute(images, target) for m in methods}

