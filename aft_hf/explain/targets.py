"""What a saliency map explains: image-text cosine similarity, or similarity to a reference image.

AFT changes only the image tower, so text targets come from the *original* text tower: the text
half of a full ``CLIPModel`` checkpoint (the fine-tuned export keeps it), or of another checkpoint
when the explained model is vision-only (``--text-model``). Every target embedding is
L2-normalised (docs/method.md#traps: un-normalised text embeddings skew the argmax).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AftError
from ..model import family_of

logger = logging.getLogger(__name__)


class ExplainError(AftError, ValueError):
    """Bad input to an explanation or evaluation (a message says what and how to fix it)."""


class TemplateError(ExplainError):
    """A prompt template that cannot take a class name."""


def check_template(template: str) -> str:
    """A class prompt template must contain exactly one ``{}`` slot for the class name."""
    if template.count("{}") != 1:
        raise TemplateError(
            f"prompt template {template!r} must contain exactly one '{{}}' where the class name goes, "
            "e.g. 'a photo of a {}.'")
    try:
        template.format("x")
    except (KeyError, IndexError, ValueError) as e:
        raise TemplateError(f"prompt template {template!r} has braces other than its one '{{}}' slot ({e!r}); "
                            "write a literal brace as '{{' or '}}'") from e
    return template


class TextTower(nn.Module):
    """The text encoder (+ CLIP's projection) + tokenizer: prompts -> L2-normalised embeddings (N, D).

    CLIP pools at the end-of-text token, so prompts are padded to the longest; SigLIP pools the LAST
    position and was trained on prompts padded to its full text length, so its prompts are padded
    to ``max_length`` (as its processor does). ``logit_bias`` is SigLIP's (0 for CLIP): its zero-shot
    score of class c is ``sigmoid(logit_scale * cos + logit_bias)``, per class; the bias is the same
    for every class, so accuracies and the attacks' losses (cross-entropy, DLR) do not depend on it.

    Prompts longer than the text model's positions are truncated as CLIP does: the tokenizer keeps
    ``<bos>``, the first tokens and ``<eos>`` (where the text model pools) within
    ``min(tokenizer.model_max_length, max_position_embeddings)``. ``frozen=False`` shares a model
    being trained (the world's pretraining) without turning its gradients off.
    """

    def __init__(self, clip_model, tokenizer, frozen: bool = True):
        super().__init__()
        self.text_model = clip_model.text_model
        self.text_projection = getattr(clip_model, "text_projection", None) or nn.Identity()
        self.logit_scale = float(clip_model.logit_scale.detach().exp())
        bias = getattr(clip_model, "logit_bias", None)
        self.logit_bias = float(bias.detach().reshape(-1)[0]) if bias is not None else 0.0
        self.sigmoid = bias is not None
        """True for SigLIP: scores are per-class sigmoids, not a softmax over classes."""
        family = family_of(getattr(getattr(clip_model, "config", None), "model_type", ""))
        self.family = family.name if family is not None else "siglip" if self.sigmoid else "clip"
        self.padding: Union[bool, str] = "max_length" if self.sigmoid else True
        self.tokenizer = tokenizer
        positions = getattr(self.text_model.config, "max_position_embeddings", None) or 77
        # SigLIP pads every prompt to its full text length, as its processor does; CLIP to the longest prompt
        self.max_length = positions if self.sigmoid else \
            min(int(getattr(tokenizer, "model_max_length", positions) or positions), positions)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @property
    def dim(self) -> int:
        """Width of the text embeddings (the image embeddings must match it)."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        config = self.text_model.config  # SigLIP: the text head's width
        return getattr(config, "projection_size", None) or config.hidden_size

    def scores(self, image_embeds: Tensor, class_weights: Tensor) -> Tensor:
        """Zero-shot scores (B, C) of L2-normalised image embeddings: a softmax over classes (CLIP) or
        per-class sigmoids (SigLIP), as the zero-shot pipeline reports them."""
        logits = self.logit_scale * image_embeds.float() @ class_weights.float().T + self.logit_bias
        return logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> Tensor:
        """``tower(prompts)``: :meth:`encode`."""
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
        """L2-normalised text embeddings of ``prompts`` (N, D)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ExplainError("no prompts to encode")
        device = next(self.text_model.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(list(prompts[i:i + batch_size]), padding=self.padding, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            tok = {k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            pooled = self.text_model(**tok).pooler_output
            out.append(F.normalize(self.text_projection(pooled).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)) -> Tensor:
        """Zero-shot classifier weights (C, D): per class, the normalised mean of its normalised prompt embeddings."""
        templates = [check_template(t) for t in templates]
        if not class_names:
            raise ExplainError("no class names given")
        weights = []
        for name in class_names:
            emb = self.encode([t.format(name) for t in templates])
            weights.append(F.normalize(emb.mean(dim=0), dim=-1))
        weights = torch.stack(weights)
        self._check_distinct(weights, class_names, templates)
        return weights

    def _check_distinct(self, weights: Tensor, class_names: Sequence[str], templates: Sequence[str]) -> None:
        """Refuse classes that all get one embedding (zero-shot would be chance, silently), warn about pairs that do.

        A checkpoint saved without its tokenizer's vocabulary loads a tokenizer that reads every word as
        the same unknown token: every prompt then has the same tokens and every class the same embedding."""
        _, group, counts = torch.unique(weights, dim=0, return_inverse=True, return_counts=True)  # C log C, not C^2
        if int(counts.max()) == 1:
            return
        members = [torch.nonzero(group == g).flatten().tolist() for g in torch.nonzero(counts > 1).flatten().tolist()]
        same = sorted((a, b) for m in members for i, a in enumerate(m) for b in m[i + 1:])
        if len(counts) == 1:
            tokens = self.tokenizer([templates[0].format(n) for n in class_names])["input_ids"]
            why = (f"its tokenizer ({len(self.tokenizer)} tokens in its vocabulary) reads every prompt as the same tokens"
                   if all(t == tokens[0] for t in tokens) else "its text model maps them to one point")
            raise ExplainError(f"the text tower gives all {len(weights)} classes the same embedding, so zero-shot scores "
                               f"cannot tell them apart: {why}; was the checkpoint saved without its tokenizer files? "
                               "Load the text tower from a checkpoint with its tokenizer (e.g. --text-model)")
        pairs = ", ".join(f"'{class_names[a]}' = '{class_names[b]}'" for a, b in same[:3])
        logger.warning("classes with the same text embedding, which zero-shot scores cannot tell apart: %s%s", pairs,
                       f" and {len(same) - 3} more pairs" if len(same) > 3 else "")


def load_text_tower(name_or_path: str, revision: Optional[str] = None, token: Optional[str] = None) -> TextTower:
    """The text half of a full CLIP (or SigLIP) checkpoint (Hub id or folder) with its tokenizer."""
    from transformers import AutoTokenizer

    from ..model import FAMILIES, WEIGHTS_DTYPE, ModelLoadError, load_model_config, resolve_builtin_model

    source = resolve_builtin_model(name_or_path)
    config = load_model_config(name_or_path, revision=revision, token=token)  # a missing one: one clear line
    family = next((f for f in FAMILIES.values() if f.full_type == config.model_type), None)
    if family is None:
        raise ModelLoadError(
            f"'{name_or_path}' is a '{config.model_type}' checkpoint without a text tower; pass a full CLIP "
            "checkpoint as the text model (e.g. --text-model openai/clip-vit-base-patch16)")
    try:
        model = family.full_class.from_pretrained(source, revision=revision, token=token, dtype=WEIGHTS_DTYPE)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, token=token)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the text tower or tokenizer of '{name_or_path}': {e}") from e
    tower = TextTower(model, tokenizer)
    del model
    return tower


def is_full_clip(name_or_path: str) -> bool:
    """True when the checkpoint holds a full CLIPModel or SiglipModel (so it has its own text tower). A model
    that cannot be read at all (a mistyped path, offline without a cached copy) raises
    :class:`~aft_hf.model.ModelLoadError` saying so, rather than passing for a vision-only model."""
    from ..model import FAMILIES, load_model_config

    return load_model_config(name_or_path).model_type in {f.full_type for f in FAMILIES.values()}


def image_targets(encoder: nn.Module, reference: Tensor) -> Tensor:
    """L2-normalised embedding(s) of reference image(s) (pixels in [0, 1]) as attribution targets."""
    with torch.no_grad():
        return F.normalize(encoder(reference).float(), dim=-1)


def as_target(target: Union[Tensor, Sequence[float]], batch: int) -> Tensor:
    """Broadcast a target of shape (D,), (1, D) or (B, D) to (B, D) and L2-normalise it.

    A prompt (a string) is not a target: encode it first, e.g. ``load_text_tower(model).encode([prompt])``.
    """
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(v, str) for v in target)):
        raise ExplainError("target must be embeddings (a tensor (D,), (1, D) or (B, D)), not text: encode prompts "
                           "first, e.g. aft_hf.explain.load_text_tower(model).encode(['a photo of a dog.'])")
    try:
        t = torch.as_tensor(target, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ExplainError(f"target must be embeddings (a tensor (D,), (1, D) or (B, D)), got "
                           f"{type(target).__name__}: {e}") from e
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] not in (1, batch):
        raise ExplainError(f"target must have shape (D,), (1, D) or ({batch}, D); got {tuple(t.shape)}")
    return F.normalize(t.expand(batch, -1), dim=-1)
