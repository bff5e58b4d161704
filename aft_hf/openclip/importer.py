"""Import released open_clip image encoders (AFT, FARE, TeCoA, ...) into the transformers CLIP format.

    checkpoint file (torch.load(weights_only=True) or safetensors)
        -> unwrap ({"state_dict": ...}, {"model": ...}, "module." / "visual." prefixes)
        -> check keys and shapes against the geometry (--arch, or inferred with --arch auto)
        -> rename/split to transformers names (in_proj -> q/k/v, proj -> visual_projection.weight^T)
        -> load into the base CLIPModel (its text tower, tokenizer and processor are kept)
        -> save_pretrained + processor/tokenizer files + aft_import.json (provenance)

open_clip layout (``VisionTransformer``): ``conv1`` (no bias), ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``
of shape (width, embed_dim) applied as ``x @ proj``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from torch import Tensor

from ..constants import IMPORT_FILE
from ..files import sha256_file
from ..model import save_preprocessing
from ..outputs import OutputError, check_output_dir, discard, replace_dir, staging_dir, write_marker
from .files import OPEN_CLIP_CONFIG, READ_FROM, ConvertError, load_checkpoint_file, read_open_clip_config, resolve_checkpoint
from .keymap import vision_from_open_clip

logger = logging.getLogger(__name__)




@dataclass(frozen=True)
class VitGeometry:
    """The shape of an open_clip ViT image tower (heads cannot be read from weights: head width 64)."""

    width: int
    layers: int
    heads: Optional[int]
    mlp: int
    patch: int
    image: int
    embed: int

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1


# Public config values of the released models (docs/method.md#model-geometries).
ARCHS: dict[str, VitGeometry] = {
    "ViT-B-32": VitGeometry(width=768, layers=12, heads=12, mlp=3072, patch=32, image=224, embed=512),
    "ViT-B-16": VitGeometry(width=768, layers=12, heads=12, mlp=3072, patch=16, image=224, embed=512),
    "ViT-L-14": VitGeometry(width=1024, layers=24, heads=16, mlp=4096, patch=14, image=224, embed=768),
}
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
"""Keys under which training checkpoints keep the weights (tried in this order)."""
STRIP_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes added by DataParallel/DDP and torch.compile."""


def arch_geometry(arch: str) -> Optional[VitGeometry]:
    """``ViT-B-16`` (also ``ViT-B/16``, ``vit_b_16``, ``ViT-B-16-quickgelu``) -> its geometry; ``auto`` -> None."""
    if arch.lower() == "auto":
        return None
    key = re.sub(r"[-_/]quickgelu$", "", arch, flags=re.I)
    key = re.sub(r"[_/]", "-", key).lower()
    for name, geom in ARCHS.items():
        if name.lower() == key:
            return geom
    raise ConvertError(f"unknown --arch '{arch}' (known: {', '.join(ARCHS)}, or 'auto' to read it from the weights)")


# --------------------------------------------------------------------------- reading the file


def extract_visual_state_dict(obj: object) -> tuple[dict[str, Tensor], list[str]]:
    """The image tower's weights under bare open_clip names, and the keys left aside (text tower etc.).

    Accepts a bare state dict, one with the ``visual.`` prefix (a whole open_clip model), or a
    training checkpoint dict holding one under a key of ``WRAPPER_KEYS``, with or without ``module.``.
    """
    seen = []
    while isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise ConvertError(
                "no state dict found in the checkpoint: it is a dict with non-tensor entries and none of the "
                f"keys {', '.join(WRAPPER_KEYS)} (top-level keys: {', '.join(map(str, list(obj)[:12]))})")
        seen.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"the checkpoint holds a {type(obj).__name__}, not a non-empty state dict")
    state = dict(obj)
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        ignored = sorted(k for k in state if not k.startswith("visual."))
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    else:
        ignored = []
    if seen:
        logger.info("weights found under %s", " -> ".join(seen))
    return state, ignored


# --------------------------------------------------------------------------- geometry and key mapping


def infer_geometry(state: dict[str, Tensor], heads: Optional[int] = None) -> VitGeometry:
    """Read the geometry from the shapes of an open_clip image-tower state dict."""
    needed = ("conv1.weight", "positional_embedding", "proj", "transformer.resblocks.0.mlp.c_fc.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ConvertError(f"not an open_clip ViT image tower: missing {', '.join(missing)} "
                           f"(found keys like {', '.join(list(state)[:6])})")
    width, _, patch, _ = state["conv1.weight"].shape
    grid2 = state["positional_embedding"].shape[0] - 1
    grid = round(grid2 ** 0.5)
    if grid * grid != grid2:
        raise ConvertError(f"positional_embedding has {grid2 + 1} rows, not a square patch grid + 1")
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    return VitGeometry(width=width, layers=layers, heads=heads, mlp=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                       patch=patch, image=grid * patch, embed=state["proj"].shape[1])


def _describe(g: VitGeometry) -> str:
    return f"width {g.width}, {g.layers} layers, MLP {g.mlp}, patch {g.patch}, {g.image} px, embedding {g.embed}"


def open_clip_shapes(g: VitGeometry) -> dict[str, tuple[int, ...]]:
    """Every key of an open_clip image tower of geometry ``g`` with its shape."""
    w = g.width
    shapes = {"conv1.weight": (w, 3, g.patch, g.patch), "class_embedding": (w,), "positional_embedding": (g.tokens, w),
              "ln_pre.weight": (w,), "ln_pre.bias": (w,), "ln_post.weight": (w,), "ln_post.bias": (w,),
              "proj": (w, g.embed)}
    for i in range(g.layers):
        b = f"transformer.resblocks.{i}."
        shapes.update({
            b + "ln_1.weight": (w,), b + "ln_1.bias": (w,), b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
            b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,),
            b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
            b + "mlp.c_fc.weight": (g.mlp, w), b + "mlp.c_fc.bias": (g.mlp,),
            b + "mlp.c_proj.weight": (w, g.mlp), b + "mlp.c_proj.bias": (w,),
        })
    return shapes


def check_state_dict(state: dict[str, Tensor], g: VitGeometry, ignore_unexpected: bool = False) -> list[str]:
    """Compare keys and shapes with geometry ``g``; raise listing every problem. Returns unexpected keys."""
    expected = open_clip_shapes(g)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {expected[k]})"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:10])}{' ...' if len(wrong) > 10 else ''}")
    if unexpected and not ignore_unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (pass --ignore-unexpected to drop them): "
                        f"{', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
    if problems:
        raise ConvertError(f"the checkpoint does not match {g}:\n  - " + "\n  - ".join(problems))
    return unexpected


def to_transformers(state: dict[str, Tensor], g: VitGeometry) -> dict[str, Tensor]:
    """open_clip image-tower names -> ``CLIPModel`` names (``vision_model.*``, ``visual_projection.weight``)."""
    return vision_from_open_clip(state, g.layers)


# --------------------------------------------------------------------------- fuse with the base


def _load_base(base: str, vision_activation=None):
    """(resolved source, the base ``CLIPModel``); ``vision_activation(base_act) -> act`` may change the vision
    tower's activation before the weights are loaded."""
    from transformers import AutoConfig, CLIPModel

    from ..model import resolve_builtin_model

    source = resolve_builtin_model(base)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise ConvertError(f"could not load the base model '{base}': {e}. Offline, --base must be a local folder "
                           "(or a model already in the Hub cache).") from None
    if config.model_type != "clip":
        raise ConvertError(f"the base '{base}' is a '{config.model_type}' model; it must be a full CLIPModel "
                           "(its text tower, tokenizer and processor complete the converted image encoder)")
    if vision_activation is not None:
        config.vision_config.hidden_act = vision_activation(config.vision_config.hidden_act)
    return source, CLIPModel.from_pretrained(source, config=config)


def _check_base(g: VitGeometry, base_model) -> VitGeometry:
    """The base's vision tower must have the checkpoint's geometry; heads come from the base when unknown."""
    vc = base_model.config.vision_config
    have = dict(width=vc.hidden_size, layers=vc.num_hidden_layers, mlp=vc.intermediate_size, patch=vc.patch_size,
                image=vc.image_size, embed=base_model.config.projection_dim)
    diffs = [f"{k}: checkpoint {getattr(g, k)}, base {v}" for k, v in have.items() if getattr(g, k) != v]
    if g.heads is not None and g.heads != vc.num_attention_heads:
        diffs.append(f"heads: checkpoint {g.heads}, base {vc.num_attention_heads}")
    if diffs:
        raise ConvertError("the base model's vision tower does not have the checkpoint's geometry "
                           f"({'; '.join(diffs)}): pick the base the checkpoint was fine-tuned from")
    return VitGeometry(**{**asdict(g), "heads": vc.num_attention_heads})


ACTIVATIONS = ("quick_gelu", "gelu")
"""The two MLP activations of CLIP ViTs: QuickGELU (OpenAI CLIP and its fine-tunes) and exact GELU (most
open_clip models trained from scratch). transformers names them like this in ``hidden_act``."""


def checkpoint_activation(option: str, arch: str, open_clip_cfg: Optional[dict]) -> tuple[Optional[str], str]:
    """(the activation the checkpoint was trained with, or None when nothing says; where that came from)."""
    if option != "auto":
        if option not in ACTIVATIONS:
            raise ConvertError(f"--activation must be auto, quick_gelu or gelu, not '{option}'")
        return option, "--activation"
    if re.search(r"[-_]quickgelu$", arch, flags=re.I):
        return "quick_gelu", "--arch"
    # only an explicit flag counts: open_clip writes the config of the model *name*, so a fine-tune of OpenAI
    # weights built as "ViT-L-14" with pretrained="openai" may be saved without quick_gelu although it uses it
    if open_clip_cfg is not None and isinstance(open_clip_cfg.get("quick_gelu"), bool):
        return ("quick_gelu" if open_clip_cfg["quick_gelu"] else "gelu"), open_clip_cfg.get(READ_FROM, OPEN_CLIP_CONFIG)
    return None, "base"


def _choose_activation(found: Optional[str], origin: str, base_act: str) -> str:
    """The vision tower's activation: the checkpoint's when known (a mismatch with the base is reported)."""
    if found is None:
        logger.info("the checkpoint does not state its activation: using the base's (%s); pass --activation gelu "
                    "if it was trained with GELU", base_act)
        return base_act
    if found != base_act:
        logger.warning("activation mismatch: the checkpoint was trained with %s (%s) but the base's vision tower "
                       "uses %s; the converted vision tower uses %s (the text tower keeps the base's). If the "
                       "checkpoint was fine-tuned from this base, this is wrong: check --activation/--arch.",
                       found, origin, base_act, found)
    return found


def import_checkpoint(checkpoint: Union[str, Path], base: str, out: Union[str, Path], arch: str = "auto",
                      ignore_unexpected: bool = False, overwrite: bool = False, activation: str = "auto",
                      filename: Optional[str] = None, revision: Optional[str] = None) -> Path:
    """Convert an open_clip image-encoder checkpoint into a full ``CLIPModel`` folder at ``out``.

    Args:
        checkpoint: ``.pt``/``.pth``/``.bin`` (read with ``weights_only=True``) or ``.safetensors``, or a Hub
            repo id (``org/name``; ``filename``/``revision`` pick the file; cached files resolve offline).
        base: the CLIP the checkpoint was fine-tuned from (Hub id or local folder; offline: local).
            Its text tower, tokenizer and image processor are saved; its vision weights replaced.
        arch: ``ViT-B-16``, ``ViT-B-32``, ``ViT-L-14`` (``-quickgelu`` states the activation) or ``auto``.
        ignore_unexpected: drop keys that are not part of the image tower instead of refusing.
        overwrite: replace ``out`` when it is a folder that aft_hf wrote (never anything else).
        activation: ``quick_gelu``/``gelu`` as trained, or ``auto`` (from ``--arch`` or an
            ``open_clip_config.json`` beside the checkpoint; else the base's).
    """
    named = arch_geometry(arch)
    path, repo_id = resolve_checkpoint(checkpoint, filename, revision)
    base_local = Path(base) if Path(base).exists() else None
    try:
        out = check_output_dir(out, overwrite, inputs=[base_local], input_files=[path if repo_id is None else None])
    except OutputError as e:
        raise ConvertError(str(e)) from None
    state, ignored = extract_visual_state_dict(load_checkpoint_file(path))
    geometry = _checked_geometry(state, named, arch)
    unexpected = check_state_dict(state, geometry, ignore_unexpected)
    found, origin = checkpoint_activation(activation, arch, read_open_clip_config(path, repo_id, revision))
    source, model = _load_base(base, lambda base_act: _choose_activation(found, origin, base_act))
    geometry = _check_base(geometry, model)
    _fill_vision(model, to_transformers(state, geometry))
    tmp = staging_dir(out)
    try:
        model.save_pretrained(tmp)
        save_preprocessing(source, tmp)
        arch_name = next((name for name, g in ARCHS.items() if g == geometry), "custom ViT")
        info = {"source_checkpoint": f"{repo_id}/{path.name}" if repo_id else path.name, "sha256": sha256_file(path),
                "arch": arch_name, "geometry": asdict(geometry), "base": base,
                "hidden_act": model.config.vision_config.hidden_act, "activation_source": origin,
                "ignored_keys": ignored + unexpected}
        (tmp / IMPORT_FILE).write_text(json.dumps(info, indent=2))
        write_marker(tmp, "aft-hf import-checkpoint")
    except BaseException:
        discard(tmp)
        raise
    replace_dir(tmp, out)
    logger.info("converted %s (%d image-tower tensors, %d other keys ignored) -> %s",
                checkpoint, len(state) - len(unexpected), len(ignored) + len(unexpected), out)
    return out


def _checked_geometry(state: dict[str, Tensor], named: Optional[VitGeometry], arch: str) -> VitGeometry:
    """The geometry to convert with: ``--arch``'s (after a plain check against the weights) or the inferred one."""
    if named is None:
        return infer_geometry(state)
    try:
        found: Optional[VitGeometry] = infer_geometry(state, heads=named.heads)
    except ConvertError:
        found = None  # check_state_dict gives the key-level detail
    if found is not None and found != named:
        raise ConvertError(f"the weights are not {arch}: they have {_describe(found)}, {arch} has "
                           f"{_describe(named)} (use --arch auto to convert a custom geometry)")
    return named


def _fill_vision(model, converted: dict[str, Tensor]) -> None:
    """Load the converted vision weights into the base; every vision weight must be replaced."""
    dtype = model.visual_projection.weight.dtype
    vision_keys = {k for k in model.state_dict() if k.startswith(("vision_model.", "visual_projection."))}
    not_filled = sorted(vision_keys - set(converted))
    if not_filled:  # a transformers version with extra persistent vision weights: never leave base weights in
        raise ConvertError(f"the conversion does not fill these vision weights of the base: {', '.join(not_filled)}")
    result = model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=False)
    if result.unexpected_keys:
        raise ConvertError(f"internal key mapping error, unexpected: {result.unexpected_keys}")
    model.config.vision_config.projection_dim = model.config.projection_dim  # docs/method.md#loading-clip-vision-checkpoints
