"""CLIP (and SigLIP) image encoders that take pixels in [0, 1]: loading, the normalising wrapper, export.

The model families (CLIP, SigLIP) are entries of :data:`FAMILIES`. For SigLIP, ``pooled`` is the
attention-pooling head's output and there is no class token (docs/vlm.md).

AFT budgets live in pixel space, so CLIP's mean/std normalisation happens *inside*
:class:`ImageEncoder`. What the encoder returns (the embedding AFT keeps close to the original's):

- ``pooled`` (default): the projected embedding (``image_embeds``) when the checkpoint has a
  projection (a full ``CLIPModel`` or a ``CLIPVisionModelWithProjection``); for a bare
  ``CLIPVisionModel`` (the vision tower LLaVA-style models use) its own pooled output
  (``pooler_output``: the post-layernorm CLS token). A projection is never invented.
- ``patch_tokens``: the penultimate layer's patch tokens without CLS (B, N, H), what LLaVA feeds
  its projector. Each token is L2-normalised (when ``normalize``) and the tokens are flattened
  with a 1/sqrt(N) factor, so the squared distance of two outputs is the *mean over patches* of
  the per-patch squared distance.

Either is optionally L2-normalised (g in docs/method.md#objective). A weight the checkpoint lacks is an error
(:class:`ModelLoadError`), never a random initialisation.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
    SiglipModel,
    SiglipVisionModel,
)

from .constants import BUILTIN_PREFIX, CLIP_MEAN, CLIP_STD, CONFIG_FILE, LLAVA_FEATURE_LAYER, WORLD_CLIP_DIR
from .env import hub_offline
from .errors import AftError, InputError
from .resolution import resize_embeddings, resize_image_processor

logger = logging.getLogger(__name__)

EMBEDDINGS = ("pooled", "patch_tokens")
WEIGHTS_DTYPE = torch.float32
"""The dtype every checkpoint is loaded in, whatever it was saved in. transformers loads a checkpoint in its saved
dtype (a VLM's tower is often fp16 or bf16), and AFT's optimiser needs fp32 weights: AdamW on fp16 weights
underflows its eps and blows updates up to about the fp16 maximum times lr, on bf16 weights most updates of
lr 1e-5 round away. Reduced precision is autocast's job (``--mixed_precision``); exports are fp32 too."""
TINY_CLIP_VERSION = 2
"""Bumped whenever the tiny CLIP's recipe changes, so a copy cached by an older version is not reused."""


class ModelLoadError(AftError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def normalize_pixels(pixels: Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """Pixels in [0, 1] (B, 3, H, W) -> the model's ``pixel_values``: ``(pixels - mean) / std`` per channel."""
    mean = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean) / std


class ImageEncoder(nn.Module):
    """pixels in [0, 1] (B, 3, H, W) -> CLIP image embedding (B, D) (see the module docstring).

    Args:
        vision: a ``CLIPVisionModelWithProjection`` or a ``CLIPVisionModel``.
        image_mean, image_std: the processor's normalisation, applied inside ``forward``.
        normalize: L2-normalise the embedding (``model.output_normalize``).
        embedding: ``pooled`` or ``patch_tokens`` (``model.embedding``).
    """

    def __init__(
        self,
        vision: Union[CLIPVisionModelWithProjection, CLIPVisionModel],
        image_mean: tuple[float, ...] = CLIP_MEAN,
        image_std: tuple[float, ...] = CLIP_STD,
        normalize: bool = True,
        embedding: str = "pooled",
        feature_layer: int = LLAVA_FEATURE_LAYER,
    ):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ModelLoadError(f"unknown embedding '{embedding}' (choose from {', '.join(EMBEDDINGS)})")
        layers = vision.config.num_hidden_layers
        if embedding == "patch_tokens" and not -(layers + 1) <= feature_layer <= layers:
            raise ModelLoadError(f"model.feature_layer {feature_layer} is no hidden state of a {layers}-layer tower "
                                 f"({-(layers + 1)}..{layers}, as a VLM's vision_feature_layer)")
        self.vision = vision
        self.normalize = normalize
        self.embedding = embedding
        self.feature_layer = feature_layer
        """The hidden state ``patch_tokens`` reads (-2: the penultimate layer's, LLaVA's ``vision_feature_layer``)."""
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.source: Optional[str] = None
        """Where the weights came from (Hub id or folder)."""
        self.base_is_full_clip = False
        """True when loaded from a full ``CLIPModel`` (or ``SiglipModel``) checkpoint (export then writes the
        full model)."""
        self.image_processor = None
        self.family = "clip"
        """The model family (a key of :data:`FAMILIES`): ``clip`` or ``siglip``."""

    @property
    def image_size(self) -> int:
        """Side of the square input the ViT expects, in pixels."""
        return self.vision.config.image_size

    @property
    def patch_size(self) -> int:
        """Side of one ViT patch, in pixels (the patch grid of the ``group`` norm)."""
        return self.vision.config.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: 1 (CLIP's class token) or 0 (SigLIP has none)."""
        embeddings = tower(self.vision).embeddings
        return embeddings.position_embedding.num_embeddings - embeddings.num_patches

    @property
    def has_projection(self) -> bool:
        """True when the vision model carries a ``visual_projection`` (CLIP's; zero-shot is possible)."""
        return isinstance(getattr(self.vision, "visual_projection", None), nn.Module)

    @property
    def pools_class_token(self) -> bool:
        """True when the output is CLIP's pooled class token (``pooled`` embedding of a CLIP tower): then only
        the last layer's first row matters (:class:`aft_hf.perf.ClassTokenLastLayer`)."""
        return self.embedding == "pooled" and FAMILIES[self.family].pools_class_token

    def check_input(self, pixels: Tensor) -> None:
        """Refuse what is not a float (B, C, H, W) batch at the model's size, naming the problem.

        Only metadata is read (no device sync: this runs at every forward, inside the attack too); the
        value range is not checked here. :func:`aft_hf.attack.check_pixels` checks it once per attack.
        """
        if not torch.is_tensor(pixels):
            raise InputError(f"pixels must be a torch.Tensor (B, 3, H, W) in [0, 1], got {type(pixels).__name__}")
        if not pixels.is_floating_point():
            raise InputError(f"pixels must be a float tensor in [0, 1], got dtype {pixels.dtype} "
                             "(convert 8-bit data with pixels.float() / 255)")
        channels, size = self.vision.config.num_channels, self.image_size
        if pixels.dim() != 4 or pixels.shape[1] != channels:
            raise InputError(f"pixels must have shape (B, {channels}, H, W), got {tuple(pixels.shape)}"
                             + (" (channels last? use pixels.permute(0, 3, 1, 2))"
                                if pixels.dim() == 4 and pixels.shape[-1] == channels else ""))
        if tuple(pixels.shape[-2:]) != (size, size):
            raise InputError(f"pixels are {pixels.shape[-2]}x{pixels.shape[-1]} but the model expects {size}x{size}: "
                             "resize and centre-crop first (aft_hf.data.load_images or preprocess)")

    def forward(self, pixels: Tensor) -> Tensor:
        """Pixels in [0, 1] (B, 3, H, W) -> embedding (B, D) (``pooled``) or (B, N*H') (``patch_tokens``)."""
        self.check_input(pixels)
        pixel_values = normalize_pixels(pixels, self.mean, self.std)
        if self.embedding == "patch_tokens":
            hidden = self.vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            tokens = hidden[self.feature_layer][:, self.num_prefix_tokens:]  # the VLM's feature layer, CLS dropped
            if self.normalize:
                tokens = F.normalize(tokens, dim=-1)
            return tokens.flatten(1) / tokens.shape[1] ** 0.5
        out = self.vision(pixel_values=pixel_values)
        embeds = out.image_embeds if self.has_projection else out.pooler_output
        return F.normalize(embeds, dim=-1) if self.normalize else embeds

    def frozen_copy(self) -> "ImageEncoder":
        """A copy in eval mode with no trainable parameters: f_theta0, the source of AFT targets."""
        frozen = copy.deepcopy(self).eval()
        frozen.requires_grad_(False)
        return frozen


# --------------------------------------------------------------------------- building and loading


def clip_config(image_size: int = 32, patch_size: int = 8, projection_dim: int = 32, vocab_size: int = 64, *,
                vision_hidden: int = 32, vision_layers: int = 2, vision_heads: int = 2, vision_mlp: int = 64,
                text_hidden: int = 32, text_layers: int = 2, text_heads: int = 2, text_mlp: int = 64,
                max_text_length: int = 16) -> CLIPConfig:
    """The ``CLIPConfig`` of the package's own small CLIPs (quick_gelu, word-level tokenizer ids: pad 0,
    bos 2, eos 3, so the text tower pools at eos). The defaults are the tiny test CLIP; the world CLIP
    (:mod:`aft_hf.world`) passes its sizes."""
    from .tokenizer import BOS_ID, EOS_ID, PAD_ID

    cfg = CLIPConfig(
        text_config=dict(hidden_size=text_hidden, intermediate_size=text_mlp, num_hidden_layers=text_layers,
                         num_attention_heads=text_heads, vocab_size=vocab_size, max_position_embeddings=max_text_length,
                         hidden_act="quick_gelu", pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID),
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=vision_mlp, num_hidden_layers=vision_layers,
                           num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
                           hidden_act="quick_gelu"),
        projection_dim=projection_dim,
    )
    cfg.vision_config.projection_dim = projection_dim  # see docs/method.md#loading-clip-vision-checkpoints
    return cfg


def tiny_clip_config(image_size: int = 32, patch_size: int = 8, projection_dim: int = 32, vocab_size: int = 64) -> CLIPConfig:
    """A few-thousand-parameter CLIP for tests and offline smoke runs (word-level tokenizer ids)."""
    return clip_config(image_size, patch_size, projection_dim, vocab_size)


def save_tiny_clip(path: Union[str, Path], seed: int = 0, **config_kwargs) -> Path:
    """Build a random tiny ``CLIPModel`` with image processor and word-level tokenizer; ``save_pretrained`` all."""
    from transformers import CLIPImageProcessorPil

    from .tokenizer import build_word_tokenizer

    path = Path(path)
    tokenizer = build_word_tokenizer()
    config_kwargs.setdefault("vocab_size", len(tokenizer))
    torch.manual_seed(seed)
    cfg = tiny_clip_config(**config_kwargs)
    CLIPModel(cfg).save_pretrained(path)
    size = cfg.vision_config.image_size
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_siglip(path: Union[str, Path], seed: int = 0, image_size: int = 32, patch_size: int = 8,
                     hidden: int = 32, layers: int = 2) -> Path:
    """Build a random tiny ``SiglipModel`` (attention-pooling head, no class token) with its image processor
    (resize to ``image_size`` square, no crop, mean/std 0.5) and the word-level tokenizer; save all. The text
    length is the real SigLIP's 64, the length the zero-shot pipeline pads SigLIP prompts to."""
    from transformers import SiglipConfig, SiglipImageProcessorPil

    from .tokenizer import BOS_ID, EOS_ID, PAD_ID, build_word_tokenizer

    path = Path(path)
    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    size = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2)
    cfg = SiglipConfig(text_config=dict(**size, vocab_size=len(tokenizer), max_position_embeddings=64,
                                        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID),
                       vision_config=dict(**size, image_size=image_size, patch_size=patch_size))
    SiglipModel(cfg).save_pretrained(path)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("AFT_HF_CACHE", Path.home() / ".cache" / "aft_hf"))


def _tiny_clip_folder() -> str:
    """The random tiny CLIP, built into the aft_hf cache on first use."""
    path = cache_dir() / "models" / f"tiny-clip-v{TINY_CLIP_VERSION}"
    if not (path / "config.json").is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_tiny_clip(tmp)
        try:
            os.replace(tmp, path)  # atomic; loses the race harmlessly when another process won it
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


BUILTIN_MODELS: dict[str, Callable[[], str]] = {
    "tiny-clip": _tiny_clip_folder,
    "world-clip": lambda: str(WORLD_CLIP_DIR),  # pretrained in the synthetic world, shipped as data
}
"""``builtin:NAME`` -> a function returning the local folder of that model (a new builtin goes here)."""


def resolve_builtin_model(name_or_path: str) -> str:
    """``builtin:tiny-clip`` -> a local folder built on first use; ``builtin:world-clip`` -> the shipped
    world base (``aft_hf/world/base``); anything else unchanged."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)
        raise ModelLoadError(f"unknown builtin model '{name_or_path}' (known: {known})")
    return BUILTIN_MODELS[name]()


@dataclass(frozen=True)
class Family:
    """One kind of image-text model aft_hf fine-tunes: its classes, its processor, its tower's layout."""

    name: str
    full_type: str
    """``model_type`` of the full image-text model (``clip``, ``siglip``)."""
    vision_type: str
    """``model_type`` of a vision-only checkpoint (``clip_vision_model``, ``siglip_vision_model``)."""
    full_class: type
    vision_class: type
    """The vision class built from a full checkpoint (CLIP: the one with the projection)."""
    processor_class: str
    """The PIL image processor's class name in transformers (no torchvision needed)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """The family's pixel normalisation, used when a checkpoint has no processor saved with it."""
    pools_class_token: bool = False
    """True when the tower's pooled output is its last layer's class token row alone (CLIP); False when a head
    reads every row (SigLIP's attention pooling)."""
    projection: bool = False
    """True when the full model projects image features into the text space (CLIP's ``visual_projection``, of
    width ``projection_dim``); False when the pooled output is the embedding (SigLIP)."""
    bare_vision_class: Optional[type] = None
    """The vision class without the projection, loaded for a checkpoint saved as it (CLIP: ``CLIPVisionModel``)."""


FAMILIES: dict[str, Family] = {
    "clip": Family("clip", "clip", "clip_vision_model", CLIPModel, CLIPVisionModelWithProjection,
                   "CLIPImageProcessorPil", CLIP_MEAN, CLIP_STD, pools_class_token=True, projection=True,
                   bare_vision_class=CLIPVisionModel),
    "siglip": Family("siglip", "siglip", "siglip_vision_model", SiglipModel, SiglipVisionModel,
                     "SiglipImageProcessorPil", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Supported families by name: a new tower family is one entry here (loading, training, evaluation, explanation,
export and a generic model card follow from it; the VLM graft and the open_clip conversion know CLIP and SigLIP
only). SigLIP2 checkpoints at a fixed resolution
are ``siglip`` models; the variable-resolution NaFlex ``siglip2`` classes are not supported."""


def family_of(model_type: str) -> Optional[Family]:
    """The family whose full or vision-only ``model_type`` this is, or None."""
    return next((f for f in FAMILIES.values() if model_type in (f.full_type, f.vision_type)), None)


def tower(vision: nn.Module) -> nn.Module:
    """The vision transformer inside a vision model (``vision.vision_model``, or the model itself when
    transformers builds it flat, as for ``CLIPVisionModel`` and ``SiglipVisionModel``)."""
    return getattr(vision, "vision_model", vision)


def _load_image_processor(source: str, revision: Optional[str], family: str = "clip"):
    """The saved image processor, if any, as its family's PIL class (its mean/std and size are used;
    torchvision not needed)."""
    try:
        import transformers

        return getattr(transformers, FAMILIES[family].processor_class).from_pretrained(source, revision=revision)
    except (OSError, ValueError, ImportError):
        return None


def _vision_from_full(full: nn.Module, family: Family) -> nn.Module:
    """The vision model of a full CLIP/SigLIP, with its weights (CLIP: and ``visual_projection``)."""
    vcfg = copy.deepcopy(full.config.vision_config)
    if family.projection:
        vcfg.projection_dim = full.config.projection_dim
    vision = family.vision_class(vcfg)
    tower(vision).load_state_dict(full.vision_model.state_dict())
    if hasattr(vision, "visual_projection"):
        vision.visual_projection.load_state_dict(full.visual_projection.state_dict())
    return vision


def _checked_from_pretrained(cls, source: str, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` that refuses a checkpoint lacking weights ``cls`` needs.

    transformers initialises missing weights randomly and only logs it; AFT on a random layer
    (and exporting it) would silently produce a broken model, so it is an error here.
    """
    from .load_report import held_load_report

    with held_load_report():  # refused below in one line: that line, not transformers' table, comes last
        model, info = cls.from_pretrained(source, output_loading_info=True, **kwargs)
        _refuse_missing(cls, name_or_path, info)
    return model


def _refuse_missing(cls, name_or_path: str, info: dict) -> None:
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        what = f"misses the weights {shown}" if missing else f"has weights of the wrong shape {mismatched[:3]}"
        raise ModelLoadError(
            f"'{name_or_path}' {what} of a {cls.__name__}: they would be randomly initialised. "
            "Check that the checkpoint is a CLIPModel, CLIPVisionModelWithProjection or CLIPVisionModel")


def _vision_class(config, family: Optional[Family] = None) -> type:
    """The class the checkpoint was saved as: a bare ``CLIPVisionModel`` has no projection to load.
    ``family``: the checkpoint's (default: read from ``config.model_type``, CLIP when it has none)."""
    family = family or family_of(getattr(config, "model_type", "")) or FAMILIES["clip"]
    architectures = getattr(config, "architectures", None) or []
    bare = family.bare_vision_class
    return bare if bare is not None and bare.__name__ in architectures else family.vision_class


def _looks_like_path(name: str) -> bool:
    """A name no Hub id can be (``./x``, ``/x``, ``~/x``, ``a/b/c``): meant as a local folder."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def _could_not_load(name_or_path: str, error: OSError) -> ModelLoadError:
    """The one error for a model that cannot be read, on one line: the cause, and what to check (a local
    folder that is not there, offline, the id, a token)."""
    if _looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        return ModelLoadError(f"could not load model '{name_or_path}': no such folder (a Hub id looks like "
                              "org/name)")
    if Path(name_or_path).expanduser().is_file():
        return ModelLoadError(f"could not load model '{name_or_path}': it is a file; give the folder that holds "
                              f"it ('{Path(name_or_path).parent}')")
    hint = (" HF_HUB_OFFLINE is set: only local folders and models already in the Hub cache can be loaded."
            if hub_offline() else " Check the id, your network, and for gated models `hf auth login` or HF_TOKEN.")
    cause = " ".join(str(error).split()).rstrip(".")
    parent = Path(name_or_path).expanduser().parent
    if parent != Path(".") and parent.is_dir():  # 'out/final' with a local 'out': most likely a mistyped folder
        cause = f"no such local folder ('{parent}' exists, '{name_or_path}' does not); as a Hub id: {cause}"
    return ModelLoadError(f"could not load model '{name_or_path}': {cause}.{hint}")


def run_folder_hint(folder: Union[str, Path]) -> str:
    """What to give instead of a folder without config.json that aft_hf wrote while training: "" for any other.
    A run's folder (``final/``, ``checkpoints/``) or one of its checkpoints holds no model to load."""
    path = Path(folder).expanduser()
    if (path / "final" / CONFIG_FILE).is_file() or (path / "checkpoints").is_dir():
        return f": it is a training run's folder; give its exported model, '{Path(folder) / 'final'}'"
    if path.parent.name == "checkpoints":
        return (f": a training checkpoint holds no exported model; write one with `aft-hf export {folder} --out DIR`, "
                "or give the run's final/ folder")
    return ""


def load_model_config(name_or_path: str, revision: Optional[str] = None,
                      token: Optional[str] = None) -> PretrainedConfig:
    """The ``transformers`` config of a Hub id, folder or builtin model, read without any weights (to check
    what a model is before loading it). Raises :class:`ModelLoadError` when it cannot be read."""
    source = resolve_builtin_model(name_or_path)
    try:
        return AutoConfig.from_pretrained(source, revision=revision, token=token)
    except OSError as e:
        raise _could_not_load(name_or_path, e) from e
    except ValueError as e:  # transformers 5: a folder without config.json, or an unknown model_type
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise ModelLoadError(f"'{name_or_path}' is not a model folder (no config.json)"
                                 + run_folder_hint(source)) from e
        cause = " ".join(str(e).split())
        raise ModelLoadError(f"could not read the config of model '{name_or_path}': {cause}") from e


def encoder_family(name_or_path: str, config=None) -> "Family":
    """The :data:`FAMILIES` entry of a checkpoint (its config read, not its weights); a model that is no CLIP or
    SigLIP encoder (a VLM, a language model) is a :class:`ModelLoadError` naming what it is."""
    config = config if config is not None else load_model_config(name_or_path)
    family = family_of(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"'{name_or_path}' is a '{config.model_type}' model; aft_hf fine-tunes CLIP and SigLIP (a CLIPModel, "
            "CLIPVisionModelWithProjection, CLIPVisionModel, SiglipModel or SiglipVisionModel checkpoint"
            + "".join(f", a {f.full_class.__name__}" for f in FAMILIES.values() if f.name not in ("clip", "siglip"))
            + "; another tower family is an entry in aft_hf.model.FAMILIES)")
    return family


def load_image_encoder(
    name_or_path: str,
    revision: Optional[str] = None,
    normalize: bool = True,
    attn_implementation: str = "sdpa",
    token: Optional[str] = None,
    embedding: str = "pooled",
    image_size: Optional[int] = None,
    feature_layer: int = LLAVA_FEATURE_LAYER,
) -> ImageEncoder:
    """Load a CLIP (or SigLIP) image encoder from a Hub id or a folder.

    Accepts a full ``CLIPModel`` (its vision tower and ``visual_projection`` are taken), a
    ``CLIPVisionModelWithProjection`` or a bare ``CLIPVisionModel`` (kept as it is: no projection,
    its pooled output or patch tokens are the embedding). ``builtin:tiny-clip`` builds a tiny
    random CLIP. A ``SiglipModel`` or ``SiglipVisionModel`` is loaded the same way (:data:`FAMILIES`).
    Raises :class:`ModelLoadError` when the checkpoint lacks any weight.

    ``image_size`` (``model.image_size``; None: the checkpoint's) other than the checkpoint's resizes
    the position embeddings once, here (:mod:`aft_hf.resolution`), with the config's ``image_size``
    and the image processor's resize/crop sizes, so the encoder is a model of that size from then on
    (trained, evaluated, explained and exported at it).
    """
    if embedding not in EMBEDDINGS:
        raise ModelLoadError(f"unknown model.embedding '{embedding}' (choose from {', '.join(EMBEDDINGS)})")
    source = resolve_builtin_model(name_or_path)
    kwargs = dict(revision=revision, token=token, attn_implementation=attn_implementation, dtype=WEIGHTS_DTYPE)
    config = load_model_config(name_or_path, revision=revision, token=token)
    family = encoder_family(name_or_path, config)
    is_full = config.model_type == family.full_type
    saved = getattr(config, "dtype", None)
    if saved not in (None, WEIGHTS_DTYPE, "float32"):
        logger.info("'%s' stores %s weights: loaded as %s (see aft_hf.model.WEIGHTS_DTYPE)", name_or_path,
                    str(saved).replace("torch.", ""), str(WEIGHTS_DTYPE).replace("torch.", ""))
    try:
        if is_full:
            full = _checked_from_pretrained(family.full_class, source, name_or_path, **kwargs)
            vision = _vision_from_full(full, family)
            vision.set_attn_implementation(attn_implementation)
            del full
        else:
            vision = _checked_from_pretrained(_vision_class(config, family), source, name_or_path, **kwargs)
    except OSError as e:
        raise _could_not_load(name_or_path, e) from e
    processor = _load_image_processor(source, revision, family.name)
    mean = tuple(processor.image_mean) if processor is not None else family.mean
    std = tuple(processor.image_std) if processor is not None else family.std
    if image_size is not None:
        old_size = vision.config.image_size
        if resize_embeddings(tower(vision).embeddings, vision.config, image_size):
            resize_image_processor(processor, old_size, image_size)
            logger.info("'%s' resized from %d to %d px (position embeddings interpolated once)",
                        name_or_path, old_size, image_size)
    if embedding == "pooled" and not getattr(vision.config, "vision_use_head", True):
        raise ModelLoadError(f"'{name_or_path}' is a SigLIP tower without its attention-pooling head, so it has no "
                             "pooled embedding: zero-shot accuracy needs its full SigLIP model (with the head), and "
                             "training reads its patch tokens (--model.embedding patch_tokens)")
    encoder = ImageEncoder(vision, mean, std, normalize=normalize, embedding=embedding, feature_layer=feature_layer)
    encoder.source, encoder.base_is_full_clip, encoder.image_processor = name_or_path, is_full, processor
    encoder.family = family.name
    return encoder


# --------------------------------------------------------------------------- export


def _earlier_export(folder: Path) -> bool:
    """A folder written by ``export_pretrained`` before exports carried the aft_hf marker."""
    return (folder / "config.json").is_file() and (folder / CONFIG_FILE).is_file()


def export_pretrained(encoder: ImageEncoder, out_dir: Union[str, Path], extra_files: Optional[dict[str, str]] = None,
                      revision: Optional[str] = None, write_extra: Optional[Callable[[Path], object]] = None) -> Path:
    """Write the fine-tuned encoder with ``save_pretrained`` (safetensors) to ``out_dir``.

    A base that was a full ``CLIPModel`` is written as a full ``CLIPModel`` (original text tower at
    ``revision``, new vision tower at the encoder's image size, the base's tokenizer and image processor saved with their own
    ``save_pretrained``), so zero-shot tools work unchanged and ``CLIPVisionModelWithProjection``
    loads the vision part. A vision-only base keeps its class: ``CLIPVisionModelWithProjection`` or ``CLIPVisionModel``
    (no projection is added). LoRA adapters are merged into their base weights first, so the folder
    loads without peft.
    ``extra_files`` maps names to text content; ``write_extra``, when given, is called with the folder being
    written to add more (the LoRA adapter in ``adapter/``), so it is moved into place with the rest and gets
    the same umask modes. The folder is written next to ``out_dir``, marked
    as aft_hf output and moved into place; an existing ``out_dir`` is replaced only when aft_hf
    wrote it (an unrelated folder raises :class:`aft_hf.outputs.OutputError`).
    """
    from .lora import has_lora, merged_copy
    from .outputs import MARKER, check_output_dir, discard, replace_dir, staging_dir, write_marker

    out_dir = Path(out_dir)
    revision = revision if revision is not None else getattr(encoder, "revision", None)
    if out_dir.is_dir() and _earlier_export(out_dir) and not (out_dir / MARKER).exists():
        write_marker(out_dir, "export_pretrained (an export of an earlier aft_hf version)")
    out_dir = check_output_dir(out_dir, overwrite=True, option="export folder")
    tmp = staging_dir(out_dir)
    try:
        vision = merged_copy(encoder.vision) if has_lora(encoder.vision) else encoder.vision
        source = resolve_builtin_model(encoder.source) if encoder.source else None
        if encoder.base_is_full_clip and source is not None:
            full = FAMILIES[encoder.family].full_class.from_pretrained(source, revision=revision, dtype=WEIGHTS_DTYPE)
            resize_embeddings(full.vision_model.embeddings, full.config.vision_config, encoder.image_size)
            full.vision_model.load_state_dict(tower(vision).state_dict())
            if encoder.has_projection:
                full.visual_projection.load_state_dict(vision.visual_projection.state_dict())
                full.config.vision_config.projection_dim = full.config.projection_dim
            full.save_pretrained(tmp)
            save_preprocessing(source, tmp, revision, encoder.image_processor, encoder.family)
        else:
            vision.save_pretrained(tmp)
            if encoder.image_processor is not None:
                encoder.image_processor.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if write_extra is not None:
            write_extra(tmp)
        write_marker(tmp, "aft_hf export_pretrained")
    except BaseException:
        discard(tmp)
        raise
    return replace_dir(tmp, out_dir)


def save_preprocessing(source: str, dest: Path, revision: Optional[str] = None, image_processor=None,
                       family: str = "clip") -> None:
    """Save the base's tokenizer and image processor next to the weights with their own ``save_pretrained``
    (local folder, Hub id or Hub cache, at ``revision``); a base without a tokenizer is left without one."""
    from transformers import AutoTokenizer

    if image_processor is None:
        image_processor = _load_image_processor(source, revision, family)
    if image_processor is not None:
        image_processor.save_pretrained(dest)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as e:  # a vision-only base: nothing to save
        logger.info("no tokenizer saved from '%s' (%s)", source, type(e).__name__)
        return
    tokenizer.save_pretrained(dest)
