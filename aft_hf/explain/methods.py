"""Attribution methods for CLIP image encoders, one signature for all:

    maps = Explainer(encoder, "saliency").attribute(images, target=text_embeddings)   # (B, 1, H, W)

``images`` are pixels in [0, 1] (B, 3, H, W); ``target`` holds L2-normalised embeddings (text or
image), shape (D,), (1, D) or (B, D). The explained scalar is cos(f^(x), t^)
(docs/method.md#attribution-methods), never a single embedding coordinate. Built on captum where
captum has the method; each method is one class registered by name (see :mod:`aft_hf.explain.base`):

- ``saliency``: Simple Gradient (captum ``Saliency``), Simonyan et al. 2014.
- ``integrated_gradients``: captum ``IntegratedGradients`` from a black image, Sundararajan et al. 2017.
- ``smoothgrad``: captum ``NoiseTunnel`` over ``Saliency``, Smilkov et al. 2017.
- ``gradcam``: captum ``LayerGradCam`` on ViT tokens reshaped to the patch grid, Selvaraju et al. 2017.
- ``attention``: last-layer CLS-to-patch attention averaged over heads (class-agnostic).
- ``rollout``: attention rollout, Abnar & Zuidema 2020 (class-agnostic).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..model import tower
from .base import (  # noqa: F401
    METHODS,
    AttributionMethod,
    SimilarityForward,
    available_methods,
    check_images,
    eager_attention,
    forward_hook,
    register_method,
    resolve_method,
    upsample,
)
from .targets import ExplainError

# --------------------------------------------------------------------------- gradient methods (any encoder)


class _GradientMethod(AttributionMethod):
    """Pixel gradients of the similarity, via a captum attribution over :class:`SimilarityForward`."""

    def raw_maps(self, images: Tensor, targets: Tensor) -> Tensor:
        inputs = images.clone().requires_grad_(True)
        with torch.enable_grad():
            return self.captum_attribute(SimilarityForward(self.encoder), inputs, targets).detach()

    @abc.abstractmethod
    def captum_attribute(self, forward: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """The captum attribution of ``forward`` at ``inputs`` for ``targets``: what each gradient method defines."""


@register_method
class Saliency(_GradientMethod):
    """Simple Gradient: d cos(f^(x), t^) / dx."""

    name, aliases = "saliency", ("simple_gradient", "gradient")
    label = "Simple Gradient"

    def captum_attribute(self, forward, inputs, targets):
        from captum.attr import Saliency as CaptumSaliency

        return CaptumSaliency(forward).attribute(inputs, abs=False, additional_forward_args=(targets,))


@register_method
class IntegratedGradients(_GradientMethod):
    """Integrated Gradients from a black image in ``n_steps`` steps."""

    name, aliases = "integrated_gradients", ("ig",)
    label = "Integrated Gradients"
    options = {"n_steps": 32}

    def captum_attribute(self, forward, inputs, targets):
        from captum.attr import IntegratedGradients as CaptumIG

        return CaptumIG(forward).attribute(inputs, baselines=torch.zeros_like(inputs), n_steps=self.n_steps,
                                           additional_forward_args=(targets,),
                                           internal_batch_size=self.batch_size * 4)


@register_method
class SmoothGrad(_GradientMethod):
    """Simple Gradient averaged over ``nt_samples`` noisy copies (noise std ``stdevs`` in pixel units)."""

    name = "smoothgrad"
    label = "SmoothGrad"
    options = {"nt_samples": 16, "stdevs": 0.15}

    def captum_attribute(self, forward, inputs, targets):
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        return NoiseTunnel(CaptumSaliency(forward)).attribute(
            inputs, nt_type="smoothgrad", nt_samples=self.nt_samples, stdevs=self.stdevs,
            nt_samples_batch_size=self.nt_samples, abs=False, additional_forward_args=(targets,))


# --------------------------------------------------------------------------- ViT methods


VISION_PREFIX = "vision_model."


def vision_transformer(vision: nn.Module) -> nn.Module:
    """The ViT (embeddings, ``encoder.layers``) of a CLIP vision model, whatever its class.

    ``CLIPVisionModelWithProjection`` holds it as ``.vision_model``; a bare ``CLIPVisionModel`` (the
    LLaVA-style tower) *is* it in transformers 5, with no ``.vision_model`` attribute.
    """
    inner = tower(vision)
    if not hasattr(getattr(inner, "encoder", None), "layers"):
        raise ExplainError(f"{type(vision).__name__} is not a CLIP ViT (no encoder.layers): the ViT methods "
                           "(gradcam, attention, rollout) need one; the gradient methods work on any encoder")
    return inner


class _ViTMethod(AttributionMethod):
    """Methods that read the ViT inside an :class:`aft_hf.model.ImageEncoder` (maps on the patch grid)."""

    needs_vit = True

    def grid_shape(self, images: Tensor) -> tuple[int, int]:
        p = self.encoder.patch_size
        return images.shape[-2] // p, images.shape[-1] // p


class _TokenGrid(nn.Identity):
    """Carries ViT patch tokens as a (B, D, h, w) grid, so captum's LayerGradCam weights channels D."""


@register_method
class GradCAM(_ViTMethod):
    """Grad-CAM on ViT tokens reshaped to the patch grid.

    ``layer``: ``None`` = the last block's ``layer_norm1`` (input of its attention; the last block's
    *output* has zero patch gradients), ``"penultimate"`` = the second-to-last block's output, a
    dotted module path inside ``encoder.vision``, or a module.
    """

    name, aliases = "gradcam", ("grad_cam",)
    label = "Grad-CAM"
    options = {"layer": None}

    def resolve_layer(self) -> nn.Module:
        """The Grad-CAM layer inside ``encoder.vision`` (see the class docstring)."""
        if isinstance(self.layer, nn.Module):
            return self.layer
        transformer = vision_transformer(self.encoder.vision)
        layers = transformer.encoder.layers
        if self.layer is None or self.layer == "last_ln1":
            return layers[-1].layer_norm1
        if self.layer == "penultimate":
            if len(layers) < 2:
                raise ExplainError("layer 'penultimate' needs a ViT with at least 2 blocks")
            return layers[-2]
        path = self.layer
        if transformer is self.encoder.vision and path.startswith(VISION_PREFIX):
            path = path[len(VISION_PREFIX):]  # a path written for the projected layout, on a bare tower
        try:
            return self.encoder.vision.get_submodule(path)
        except AttributeError as e:
            raise ExplainError(f"Grad-CAM layer '{self.layer}' not found in the vision model: {e}") from e

    def refuse_layer(self, output: object, tokens: str) -> None:
        """The one-line error for a layer whose output is not the ViT's tokens (a whole encoder's
        ``BaseModelOutput``, the pooled output after ``post_layernorm``...): what it gives, and which layers work."""
        layer = self.layer if isinstance(self.layer, str) else type(self.layer).__name__
        raise ExplainError(f"Grad-CAM layer '{layer}' outputs {output}, not {tokens} ViT tokens: use a block or a "
                           "module inside one (vision_model.encoder.layers.K, ...layers.K.layer_norm1), 'penultimate', "
                           "or leave --layer out (the last block's layer_norm1)")

    def raw_maps(self, images: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import LayerGradCam

        h, w = self.grid_shape(images)
        grid = _TokenGrid()
        prefix = getattr(self.encoder, "num_prefix_tokens", 1)  # CLIP's class token; SigLIP has none

        def to_grid(module, inputs, output):
            tokens = output[0] if isinstance(output, tuple) else output
            if not torch.is_tensor(tokens) or tokens.dim() != 3 or tokens.shape[1] != prefix + h * w:
                self.refuse_layer(tuple(tokens.shape) if torch.is_tensor(tokens) else type(output).__name__,
                                  f"(B, {prefix}+{h * w}, D)")
            cls, patches = tokens[:, :prefix], tokens[:, prefix:]
            b, n, d = patches.shape
            grid_tokens = grid(patches.transpose(1, 2).reshape(b, d, h, w))
            new = torch.cat([cls, grid_tokens.flatten(2).transpose(1, 2)], dim=1)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        with forward_hook(self.resolve_layer(), to_grid), torch.enable_grad():
            cam = LayerGradCam(SimilarityForward(self.encoder), grid).attribute(
                images, additional_forward_args=(targets,), relu_attributions=True)
        return upsample(cam.detach().float(), tuple(images.shape[-2:]))


def cls_attention(attentions: Sequence[Tensor], probe: Optional[Tensor] = None) -> Tensor:
    """Last layer's CLS-to-patch attention averaged over heads: (B, N) from (B, heads, 1+N, 1+N) per layer.

    A tower without a class token (SigLIP) pools with an attention head whose learned probe is the one
    query that forms the embedding: ``probe`` (B, 1, N), its head-averaged attention over the last
    layer's tokens, is then the map (the CLS row's counterpart).
    """
    if probe is not None:
        return probe.float()[:, 0]
    return attentions[-1].float().mean(dim=1)[:, 0, 1:]


def attention_rollout(attentions: Sequence[Tensor], residual: float = 0.5, probe: Optional[Tensor] = None) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): CLS-to-patch flow (B, N) through all layers.

    Each layer's head-averaged attention A becomes ``residual * I + (1 - residual) * A`` (the skip
    connection), rows re-normalised; the layers are multiplied from the first to the last. Without a
    class token (SigLIP) the flow ends in the pooling head's ``probe`` attention (B, 1, N), which has
    no skip connection: the map is ``probe @ rollout``.
    """
    rollout = None
    for att in attentions:
        a = att.float().mean(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if probe is not None:
        return (probe.float() @ rollout)[:, 0]
    return rollout[:, 0, 1:]


@register_method
class Attention(_ViTMethod):
    """Last-layer CLS-to-patch attention, averaged over heads (class-agnostic: ``target`` is ignored)."""

    name, needs_target = "attention", False
    label = "attention"

    def flow(self, attentions: Sequence[Tensor], probe: Optional[Tensor] = None) -> Tensor:
        return cls_attention(attentions, probe)

    @torch.no_grad()
    def raw_maps(self, images: Tensor, targets: Optional[Tensor]) -> Tensor:
        vision = self.encoder.vision
        mean, std = self.encoder.mean.to(images), self.encoder.std.to(images)
        captured: dict[str, Tensor] = {}
        with eager_attention(vision), self._probe_hook(captured):
            attentions = vision(pixel_values=(images - mean) / std, output_attentions=True).attentions
        if not attentions:
            raise ExplainError("the vision model returned no attention weights (eager attention is required)")
        h, w = self.grid_shape(images)
        return upsample(self.flow(attentions, captured.get("probe")).view(-1, 1, h, w), tuple(images.shape[-2:]))

    def _probe_hook(self, captured: dict):
        """For a tower without a class token: record its pooling head's probe attention (B, 1, N)."""
        if getattr(self.encoder, "num_prefix_tokens", 1) > 0:
            return contextlib.nullcontext()
        head = getattr(tower(self.encoder.vision), "head", None)
        if head is None:
            raise ExplainError(f"'{self.name}' needs a class token or an attention-pooling head; this tower has "
                               "neither (a SigLIP tower saved without its head)")

        def keep(module, inputs, output):
            captured["probe"] = output[1]  # nn.MultiheadAttention: weights averaged over heads

        return forward_hook(head.attention, keep)


@register_method
class Rollout(Attention):
    """Attention rollout through all layers (class-agnostic)."""

    name, aliases = "rollout", ("attention_rollout",)
    label = "attention rollout"

    def flow(self, attentions: Sequence[Tensor], probe: Optional[Tensor] = None) -> Tensor:
        return attention_rollout(attentions, probe=probe)


# --------------------------------------------------------------------------- the public entry point


class Explainer:
    """Attribution maps (B, 1, H, W) for a CLIP image encoder (pixels in [0, 1] -> embedding).

    Args:
        encoder: an :class:`aft_hf.model.ImageEncoder` (``gradcam``/``attention``/``rollout`` need
            its ``.vision`` ViT; gradient methods accept any pixels -> embedding module).
        method: a registered method name or alias (:func:`available_methods`).
        postprocess: apply |.|, 99th-percentile clip and min-max (channels are always summed).
        minmax: with ``postprocess``, min-max scale each map (``False`` together with
            ``clip_percentile=None`` gives the raw map the metrics score: |attribution| summed over channels).
        batch_size: images per internal batch (a progress bar runs over batches).
        layer: Grad-CAM layer (see :class:`GradCAM`). n_steps: Integrated Gradients steps (32).
        nt_samples, stdevs: SmoothGrad samples and noise std (16, 0.15). These are passed only to the
            methods that take them, and only when given: otherwise each method keeps its own default (a
            method of yours with ``options = {"n_steps": 4}`` gets 4). ``**options`` go to the method and
            must be among its options.
    """

    def __init__(self, encoder: nn.Module, method: str = "saliency", postprocess: bool = True,
                 batch_size: int = 8, layer: Union[None, str, nn.Module] = None, n_steps: Optional[int] = None,
                 nt_samples: Optional[int] = None, stdevs: Optional[float] = None, clip_percentile: float = 99.0,
                 progress: bool = True, minmax: bool = True, **options: Any):
        self.method = resolve_method(method)
        cls = METHODS[self.method]
        shared = {"layer": layer, "n_steps": n_steps, "nt_samples": nt_samples, "stdevs": stdevs}
        options = {**{k: v for k, v in shared.items() if k in cls.options and v is not None}, **options}
        self.impl: AttributionMethod = cls(encoder, postprocess=postprocess, batch_size=batch_size,
                                           clip_percentile=clip_percentile, progress=progress, minmax=minmax,
                                           **options)
        self.encoder = encoder

    @property
    def needs_target(self) -> bool:
        return self.impl.needs_target

    def attribute(self, images: Union[Tensor, Sequence[Tensor]], target: Optional[Tensor] = None) -> Tensor:
        """Maps (B, 1, H, W) for ``images`` in [0, 1]; ``target``: normalised embeddings (attention ignores it)."""
        return self.impl.attribute(images, target)

    __call__ = attribute


def explain(encoder: nn.Module, images: Tensor, target: Optional[Tensor], methods: Union[str, Sequence[str]],
            **kwargs: Any) -> dict[str, Tensor]:
    """Maps for several methods at once: {method: (B, 1, H, W)}; ``methods`` may also be one name."""
    if isinstance(methods, str):
        methods = [methods]
    return {resolve_method(m): Explainer(encoder, m, **kwargs).attribute(images, target) for m in methods}
