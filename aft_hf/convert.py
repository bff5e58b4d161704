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
import pickle
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from huggingface_hub.utils.sha import sha_fileobj
from torch import Tensor

from .card import IMPORT_FILE
from .errors import AftError

logger = logging.getLogger(__name__)


class ConvertError(AftError, ValueError):
    """A checkpoint could not be converted; the message names the problem."""


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


def load_checkpoint_file(path: Union[str, Path]) -> object:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (or safetensors); anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(
            f"refused '{path}': it holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) will not unpickle ({first}). Loading it fully could run "
            "arbitrary code; re-save only the weights, e.g. torch.save(model.visual.state_dict(), 'visual.pt')") from None
    except RuntimeError as e:
        if "TorchScript" in str(e) or "torch.jit" in str(e):
            raise ConvertError(f"'{path}' is a TorchScript archive: load it with open_clip or torch.jit.load and "
                               "save model.visual.state_dict() with torch.save") from None
        raise ConvertError(f"could not read '{path}': {e}") from None


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
    v = "vision_model."
    out = {
        v + "embeddings.patch_embedding.weight": state["conv1.weight"],
        v + "embeddings.class_embedding": state["class_embedding"],
        v + "embeddings.position_embedding.weight": state["positional_embedding"],
        v + "pre_layrnorm.weight": state["ln_pre.weight"], v + "pre_layrnorm.bias": state["ln_pre.bias"],
        v + "post_layernorm.weight": state["ln_post.weight"], v + "post_layernorm.bias": state["ln_post.bias"],
        "visual_projection.weight": state["proj"].t(),  # open_clip: x @ proj; nn.Linear: x @ W^T
    }
    for i in range(g.layers):
        s, t = f"transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        q, k, val = state[s + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = state[s + "attn.in_proj_bias"].chunk(3, dim=0)
        out.update({
            t + "self_attn.q_proj.weight": q, t + "self_attn.k_proj.weight": k, t + "self_attn.v_proj.weight": val,
            t + "self_attn.q_proj.bias": qb, t + "self_attn.k_proj.bias": kb, t + "self_attn.v_proj.bias": vb,
            t + "self_attn.out_proj.weight": state[s + "attn.out_proj.weight"],
            t + "self_attn.out_proj.bias": state[s + "attn.out_proj.bias"],
            t + "layer_norm1.weight": state[s + "ln_1.weight"], t + "layer_norm1.bias": state[s + "ln_1.bias"],
            t + "layer_norm2.weight": state[s + "ln_2.weight"], t + "layer_norm2.bias": state[s + "ln_2.bias"],
            t + "mlp.fc1.weight": state[s + "mlp.c_fc.weight"], t + "mlp.fc1.bias": state[s + "mlp.c_fc.bias"],
            t + "mlp.fc2.weight": state[s + "mlp.c_proj.weight"], t + "mlp.fc2.bias": state[s + "mlp.c_proj.bias"],
        })
    return {k: t.contiguous() for k, t in out.items()}


# --------------------------------------------------------------------------- fuse with the base


def _load_base(base: str):
    from transformers import AutoConfig, CLIPModel

    from .model import resolve_builtin_model

    source = resolve_builtin_model(base)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise ConvertError(f"could not load the base model '{base}': {e}. Offline, --base must be a local folder "
                           "(or a model already in the Hub cache).") from None
    if config.model_type != "clip":
        raise ConvertError(f"the base '{base}' is a '{config.model_type}' model; it must be a full CLIPModel "
                           "(its text tower, tokenizer and processor complete the converted image encoder)")
    return source, CLIPModel.from_pretrained(source)


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


def import_checkpoint(checkpoint: Union[str, Path], base: str, out: Union[str, Path], arch: str = "auto",
                      ignore_unexpected: bool = False) -> Path:
    """Convert an open_clip image-encoder checkpoint into a full ``CLIPModel`` folder at ``out``.

    Args:
        checkpoint: ``.pt``/``.pth``/``.bin`` (read with ``weights_only=True``) or ``.safetensors``.
        base: the CLIP the checkpoint was fine-tuned from (Hub id or local folder; offline: local).
            Its text tower, tokenizer and image processor are copied; its vision weights replaced.
        arch: ``ViT-B-16``, ``ViT-B-32``, ``ViT-L-14`` or ``auto`` (geometry read from the weights).
        ignore_unexpected: drop keys that are not part of the image tower instead of refusing.
    """
    from .model import _copy_preprocessing_files, _replace_dir

    checkpoint, out = Path(checkpoint), Path(out)
    named = arch_geometry(arch)
    state, ignored = extract_visual_state_dict(load_checkpoint_file(checkpoint))
    geometry = named or infer_geometry(state)
    if named is not None:  # a plain statement first; check_state_dict gives the key-level detail
        try:
            found: Optional[VitGeometry] = infer_geometry(state, heads=named.heads)
        except ConvertError:
            found = None
        if found is not None and found != named:
            raise ConvertError(f"the weights are not {arch}: they have {_describe(found)}, {arch} has "
                               f"{_describe(named)} (use --arch auto to convert a custom geometry)")
    unexpected = check_state_dict(state, geometry, ignore_unexpected)
    source, model = _load_base(base)
    geometry = _check_base(geometry, model)
    converted = to_transformers(state, geometry)
    dtype = model.visual_projection.weight.dtype
    vision_keys = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    not_filled = sorted(set(vision_keys) - set(converted))
    if not_filled:  # a transformers version with extra persistent vision weights: never leave base weights in
        raise ConvertError(f"the conversion does not fill these vision weights of the base: {', '.join(not_filled)}")
    result = model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=False)
    if result.unexpected_keys:
        raise ConvertError(f"internal key mapping error, unexpected: {result.unexpected_keys}")
    model.config.vision_config.projection_dim = model.config.projection_dim  # docs/method.md#loading-clip-vision-checkpoints

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    _copy_preprocessing_files(source, tmp)
    arch_name = next((name for name, g in ARCHS.items() if g == geometry), "custom ViT")
    info = {"source_checkpoint": checkpoint.name, "sha256": _sha256(checkpoint), "arch": arch_name,
            "geometry": asdict(geometry), "base": base, "hidden_act": model.config.vision_config.hidden_act,
            "ignored_keys": ignored + unexpected}
    (tmp / IMPORT_FILE).write_text(json.dumps(info, indent=2))
    _replace_dir(tmp, out)
    logger.info("converted %s (%d image-tower tensors, %d other keys ignored) -> %s",
                checkpoint, len(state) - len(unexpected), len(ignored) + len(unexpected), out)
    return out


# --------------------------------------------------------------------------- CLI


def add_subcommand(subparsers) -> None:
    """``aft-hf import-checkpoint CKPT --arch ViT-B-16 --base openai/clip-vit-base-patch16 --out converted/``."""
    p = subparsers.add_parser(
        "import-checkpoint", help="convert an open_clip image-encoder checkpoint into a transformers CLIPModel folder",
        description="Convert a released open_clip image encoder (bare, 'visual.'-prefixed, or inside a training "
                    "checkpoint dict) into a full CLIPModel folder with the base model's text tower and processor.")
    p.add_argument("checkpoint", help=".pt/.pth/.bin (read with weights_only=True) or .safetensors")
    p.add_argument("--arch", default="auto", help=f"{', '.join(ARCHS)} or auto (read from the weights; default)")
    p.add_argument("--base", required=True, help="the CLIP it was fine-tuned from: Hub id or local folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--ignore-unexpected", action="store_true", help="drop keys that are not part of the image tower")
    p.set_defaults(func=_cli_import)


def _cli_import(args, extra) -> int:
    out = import_checkpoint(args.checkpoint, args.base, args.out, args.arch, args.ignore_unexpected)
    info = json.loads((out / IMPORT_FILE).read_text())
    print(f"converted {args.checkpoint} -> {out} ({info['geometry']}, ignored keys: {len(info['ignored_keys'])})")
    return 0
