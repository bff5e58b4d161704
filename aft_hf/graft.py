"""Graft an AFT-tuned vision tower into a vision-language model checkpoint (``aft-hf graft``).

The VLM (LLaVA, LLaVA-NeXT, LLaVA-OneVision, or any transformers checkpoint with one CLIP or SigLIP
tower) is never loaded as a model: its safetensors files are copied and, in the shards that hold
tower tensors, only those tensors' bytes are overwritten in place with the AFT weights cast to the
shard's dtype. Names, shapes and dtypes do not change, so every header, the shard layout and the
index stay valid as they are, every other byte is the input's, and memory holds one tensor at a time
(a 7B LLaVA grafts in well under a few GB).

The tower is found generically: the one tensor named ``<root>embeddings.patch_embedding.weight``
gives its root in each checkpoint (``vision_tower.``, ``vision_tower.vision_model.``,
``model.vision_tower.vision_model.`` in the VLM; ``vision_model.`` or nothing in an AFT export), and
tensors are matched by their name below the root. AFT weights the VLM's tower lacks (CLIP's
``visual_projection``, a pooling head the VLM drops) are left out and named; a tower weight the AFT
folder lacks, a different shape or a different geometry is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import safe_open

from .errors import AftError

logger = logging.getLogger(__name__)

ANCHOR = "embeddings.patch_embedding.weight"
"""The tensor every CLIP/SigLIP vision tower has exactly once; the text before it is the tower's root."""
GEOMETRY = ("model_type", "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_channels")
"""Vision-config fields that must agree between the AFT model and the VLM's tower."""
FUNCTION = ("hidden_act", "layer_norm_eps")
"""Vision-config fields that change what the same weights compute: they must agree too."""
NOT_VISION = ("text_model.", "text_projection", "logit_scale", "logit_bias")
"""Top-level AFT tensors that belong to the text side (silently not grafted; everything else is named)."""
KEPT_BUFFERS = ("position_ids",)
"""Tower tensors a checkpoint may carry that are buffers, not weights: kept as the VLM has them."""
DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
REPORT = "aft_graft.json"
ENCODER_TYPES = ("clip", "siglip", "siglip2", "clip_vision_model", "siglip_vision_model", "siglip2_vision_model")
"""Model types that are image(-text) encoders, not VLMs: refused as ``--into``."""


class GraftError(AftError, ValueError):
    """The AFT folder and the VLM checkpoint do not fit together (or one of them cannot be read)."""


@dataclass
class Checkpoint:
    """A safetensors checkpoint folder: which file holds each tensor."""

    folder: Path
    weight_map: dict[str, str]

    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


@dataclass
class GraftPlan:
    """What a graft will do, decided (and checked) before anything is written."""

    tower_root: str
    aft_root: str
    pairs: dict[str, str] = field(default_factory=dict)
    """VLM tensor name -> AFT tensor name."""
    left_out: list[str] = field(default_factory=list)
    """AFT vision tensors the VLM's tower has no place for."""


def resolve_folder(spec: Union[str, Path], what: str, revision: Optional[str] = None) -> Path:
    """A local folder as it is; anything else a Hub id, fetched (or read from the Hub cache) with
    ``snapshot_download`` (safetensors, JSON, text and tokenizer files only)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        from .model import run_folder_hint

        if not (path / "config.json").is_file():  # a training run or checkpoint (accelerate state), a data folder...
            raise GraftError(f"{what} '{spec}' is not a model folder (no config.json){run_folder_hint(spec)}")
        return path
    from .model import _looks_like_path

    if path.is_file():
        raise GraftError(f"{what} '{spec}' is a file; give the folder that holds it ('{path.parent}')")
    if _looks_like_path(str(spec)):
        raise GraftError(f"{what} '{spec}' is not a folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as e:  # offline, unknown id, gated: one line
        from .env import hub_offline

        if hub_offline():  # the Hub's own text is a paragraph about its cache
            raise GraftError(f"could not get {what} '{spec}': no local folder of that name, and HF_HUB_OFFLINE is set "
                             "(a Hub id loads offline only from the Hub cache)") from e
        raise GraftError(f"could not get {what} '{spec}': no local folder of that name, and the Hub says: "
                         f"{' '.join(str(e).split())[:300]}") from e


def read_checkpoint(folder: Path, what: str) -> Checkpoint:
    """The tensor -> file map of a safetensors folder (sharded with an index, or one ``model.safetensors``)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return Checkpoint(folder, dict(json.loads(index.read_text())["weight_map"]))
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return Checkpoint(folder, {k: single.name for k in f.keys()})
    if any(folder.glob("pytorch_model*.bin")):
        raise GraftError(f"{what} '{folder}' holds pytorch_model*.bin weights; graft rewrites safetensors only "
                         "(re-save it with save_pretrained, which writes safetensors)")
    raise GraftError(f"{what} '{folder}' has no model.safetensors or model.safetensors.index.json")


def tower_root(checkpoint: Checkpoint, what: str) -> str:
    """The name prefix of the one vision tower (the text before ``embeddings.patch_embedding.weight``)."""
    roots = sorted(k[: -len(ANCHOR)] for k in checkpoint.weight_map if k.endswith(ANCHOR))
    if len(roots) != 1:
        found = f"{len(roots)} ({', '.join(roots)})" if roots else "none"
        raise GraftError(f"{what} '{checkpoint.folder}' must have exactly one vision tower "
                         f"(a tensor named ...{ANCHOR}); found {found}")
    return roots[0]


def vision_config(config: Any) -> Any:
    """The vision config of a full model (``config.vision_config``) or the config of a vision model itself."""
    return getattr(config, "vision_config", None) or config


def check_geometry(aft_vision: Any, vlm_config: Any) -> None:
    """Refuse, in one line, an AFT tower whose geometry is not the VLM's, or a feature layer the tower lacks."""
    tower = vlm_config.vision_config
    diffs = [f"{name} {getattr(aft_vision, name, None)} vs {getattr(tower, name, None)}" for name in GEOMETRY
             if getattr(aft_vision, name, None) != getattr(tower, name, None)]
    if diffs:
        same_family = getattr(aft_vision, "model_type", None) == getattr(tower, "model_type", None)
        hint = (f" (fine-tune at the VLM's size: --model.image_size {tower.image_size})"
                if same_family and getattr(aft_vision, "image_size", None) != tower.image_size
                else "" if same_family else " (fine-tune the VLM's own tower: docs/vlm.md)")
        raise GraftError(f"the AFT model does not fit the VLM's vision tower (AFT vs VLM): {'; '.join(diffs)}{hint}")
    layers = tower.num_hidden_layers
    feature = getattr(vlm_config, "vision_feature_layer", None)
    for layer in feature if isinstance(feature, (list, tuple)) else ([] if feature is None else [feature]):
        if not -(layers + 1) <= layer <= layers:
            raise GraftError(f"the VLM's vision_feature_layer {layer} does not exist in a {layers}-layer tower "
                             f"(hidden states {-(layers + 1)}..{layers})")


def check_function(aft_vision: Any, tower: Any, aft_dir: Path, vlm_dir: Path) -> None:
    """Refuse towers that would compute another function from the grafted weights: another activation or
    LayerNorm epsilon, or pixels normalised with another mean / std by the VLM's processor."""
    diffs = [f"{name} {getattr(aft_vision, name, None)} vs {getattr(tower, name, None)}" for name in FUNCTION
             if getattr(aft_vision, name, None) != getattr(tower, name, None)]
    stats = [_pixel_stats(aft_dir), _pixel_stats(vlm_dir)]
    if None not in stats and any(abs(a - b) > 1e-4 for a, b in zip(stats[0], stats[1])):
        diffs.append(f"pixel mean / std {stats[0]} vs {stats[1]} (preprocessor_config.json)")
    if diffs:
        raise GraftError(f"the VLM's vision tower computes another function from the same weights (AFT vs VLM): "
                         f"{'; '.join(diffs)}: fine-tune the VLM's own tower (save it with save_pretrained) instead")


def _pixel_stats(folder: Path) -> Optional[tuple[float, ...]]:
    """The processor's image mean and std, flattened, or None when the folder has no such processor config."""
    path = folder / "preprocessor_config.json"
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list)):
        return None
    return tuple(round(float(v), 6) for v in mean + std)


def check_feature_layer(aft_dir: Path, vlm_config: Any) -> None:
    """An AFT run that kept ``patch_tokens`` close must have used the layer the VLM reads (its recipe,
    ``aft_config.yaml``, says which); a pooled run trains the whole tower and fits any layer."""
    import yaml

    from .constants import CONFIG_FILE, LLAVA_FEATURE_LAYER

    path = aft_dir / CONFIG_FILE
    try:
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {} if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return
    feature = getattr(vlm_config, "vision_feature_layer", None)
    if model.get("embedding") != "patch_tokens" or feature is None:
        return
    layers = vlm_config.vision_config.num_hidden_layers
    trained = int(model.get("feature_layer", LLAVA_FEATURE_LAYER))
    read = [feature] if isinstance(feature, int) else list(feature)  # some VLMs concatenate several layers
    untrained = [layer for layer in read if layer % (layers + 1) != trained % (layers + 1)]
    if len(read) == 1 and untrained:
        raise GraftError(f"the AFT run kept the patch tokens of layer {trained} close but the VLM reads "
                         f"vision_feature_layer {feature}: train with --model.feature_layer {feature}")
    if untrained:
        raise GraftError(f"the AFT run kept the patch tokens of layer {trained} close but the VLM also reads "
                         f"layer(s) {untrained} (vision_feature_layer {feature}), which the run never kept close")
    strategy = getattr(vlm_config, "vision_feature_select_strategy", "default")
    if strategy == "full" and "clip" in getattr(vlm_config.vision_config, "model_type", ""):
        raise GraftError("the AFT run kept the patch tokens close without the class token, but the VLM reads the "
                         "class token too (vision_feature_select_strategy 'full'), which the run left free: "
                         "train with --model.embedding pooled, which is not tied to the tokens a VLM reads")


def _shape(checkpoint: Checkpoint, name: str) -> tuple[list[int], str]:
    with safe_open(str(checkpoint.folder / checkpoint.weight_map[name]), "pt") as f:
        piece = f.get_slice(name)
        return list(piece.get_shape()), piece.get_dtype()


def plan_graft(aft: Checkpoint, vlm: Checkpoint) -> GraftPlan:
    """Match the tower tensors by name below each root; check names and shapes; list what is left out."""
    aft_root, root = tower_root(aft, "AFT folder"), tower_root(vlm, "VLM")
    if not root:
        raise GraftError(f"'{vlm.folder}' is a vision model, not a VLM with a vision tower")
    aft_tower = {k[len(aft_root):]: k for k in aft.weight_map if k.startswith(aft_root)}
    vlm_tower = {k[len(root):]: k for k in vlm.weight_map if k.startswith(root)}
    missing = sorted(n for n in vlm_tower if n not in aft_tower and not n.endswith(KEPT_BUFFERS))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise GraftError(f"the AFT folder lacks tower weights the VLM has: {shown}")
    plan = GraftPlan(root, aft_root)
    for name, vlm_key in sorted(vlm_tower.items()):
        if name not in aft_tower:
            continue
        (vshape, vdtype), (ashape, _) = _shape(vlm, vlm_key), _shape(aft, aft_tower[name])
        if vshape != ashape:
            raise GraftError(f"{vlm_key} is {vshape} in the VLM but {ashape} in the AFT folder")
        if vdtype not in DTYPES:
            raise GraftError(f"{vlm_key} is stored as {vdtype}; graft writes float tensors only")
        plan.pairs[vlm_key] = aft_tower[name]
    outside = [k for k in aft.weight_map if not k.startswith(aft_root) and not k.startswith(NOT_VISION)]
    plan.left_out = sorted(outside + [aft_tower[n] for n in aft_tower if n not in vlm_tower])
    return plan


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, header) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return 8 + size, json.loads(f.read(size))


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes as safetensors stores them (C order, little-endian)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def patch_shard(path: Path, tensors: dict[str, str], aft: Checkpoint) -> None:
    """Overwrite, in the safetensors file ``path``, the bytes of each tensor in ``tensors`` (VLM name -> AFT
    name) with the AFT tensor cast to the stored dtype, one tensor at a time, then read each back."""
    start, header = _header(path)
    with open(path, "r+b") as out:
        for vlm_key, aft_key in tensors.items():
            entry = header[vlm_key]
            begin, end = entry["data_offsets"]
            with safe_open(str(aft.folder / aft.weight_map[aft_key]), "pt") as f:
                data = _raw_bytes(f.get_tensor(aft_key).to(DTYPES[entry["dtype"]]))
            if len(data) != end - begin:
                raise GraftError(f"{vlm_key}: {len(data)} bytes to write into a slot of {end - begin}")
            out.seek(start + begin)
            out.write(data)
    with safe_open(str(path), "pt") as check:  # the file still parses and holds what was written
        for vlm_key, aft_key in tensors.items():
            with safe_open(str(aft.folder / aft.weight_map[aft_key]), "pt") as f:
                expected = f.get_tensor(aft_key).to(DTYPES[header[vlm_key]["dtype"]])
            if not torch.equal(check.get_tensor(vlm_key), expected):
                raise GraftError(f"{vlm_key} did not read back as written in {path.name}")


def graft(aft_folder: Union[str, Path], into: Union[str, Path], out: Union[str, Path], overwrite: bool = False,
          revision: Optional[str] = None) -> dict:
    """Write ``out``: the VLM ``into`` with its vision tower replaced by the AFT model in ``aft_folder``.

    Every file of ``into`` is copied (config, processor, tokenizer, chat template, index unchanged); the
    shards holding tower tensors are then patched in place (:func:`patch_shard`). ``out`` also gets
    ``aft_graft.json`` (what was grafted and left out) and the aft_hf marker. Returns that report.
    Raises :class:`GraftError` (one line) when the two do not fit; nothing is written then.
    """
    from transformers import AutoConfig

    from .outputs import check_output_dir, discard, replace_dir, staging_dir, write_marker
    from .published import publishable

    if sys.byteorder != "little":
        raise GraftError("graft writes safetensors bytes directly and needs a little-endian machine")
    aft_dir, vlm_dir = resolve_folder(aft_folder, "AFT folder"), resolve_folder(into, "VLM", revision)
    out = check_output_dir(out, overwrite=overwrite, inputs=[aft_dir, vlm_dir], option="--out")
    try:
        aft_config, vlm_config = AutoConfig.from_pretrained(aft_dir), AutoConfig.from_pretrained(vlm_dir)
    except (OSError, ValueError) as e:
        raise GraftError(f"could not read a config: {' '.join(str(e).split())[:300]}") from e
    if aft_config.model_type not in ENCODER_TYPES:
        raise GraftError(f"the AFT folder '{aft_folder}' is a '{aft_config.model_type}' model, not a CLIP or SigLIP "
                         "export: pass the final/ folder of an aft-hf train run")
    if vlm_config.model_type in ENCODER_TYPES or getattr(vlm_config, "vision_config", None) is None:
        raise GraftError(f"--into '{into}' is a '{vlm_config.model_type}' model, not a VLM with a vision tower "
                         "and a language model")
    check_geometry(vision_config(aft_config), vlm_config)
    check_function(vision_config(aft_config), vlm_config.vision_config, aft_dir, vlm_dir)
    check_feature_layer(aft_dir, vlm_config)
    aft, vlm = read_checkpoint(aft_dir, "AFT folder"), read_checkpoint(vlm_dir, "VLM")
    plan = plan_graft(aft, vlm)
    by_file: dict[str, dict[str, str]] = {}
    for vlm_key, aft_key in plan.pairs.items():
        by_file.setdefault(vlm.weight_map[vlm_key], {})[vlm_key] = aft_key
    tmp = staging_dir(out)
    try:
        for item in sorted(vlm_dir.iterdir()):
            if item.name.startswith("."):
                continue
            target = tmp / item.name
            shutil.copytree(item, target) if item.is_dir() else shutil.copyfile(item, target)
        for name, tensors in by_file.items():
            patch_shard(tmp / name, tensors, aft)
        report = {"aft_folder": str(aft_folder), "vlm": str(into), "vlm_architectures": vlm_config.architectures,
                  "tower_root": plan.tower_root, "aft_root": plan.aft_root, "grafted": len(plan.pairs),
                  "shards_patched": sorted(by_file), "left_out": plan.left_out}
        (tmp / REPORT).write_text(json.dumps(publishable(report), indent=2) + "\n")  # the VLM folder gets uploaded
        write_marker(tmp, "aft-hf graft")
    except BaseException:
        discard(tmp)
        raise
    replace_dir(tmp, out)
    report["out"] = str(out)
    logger.debug("grafted %d tensors into %s (%s); left out: %s", len(plan.pairs), out, plan.tower_root,
                ", ".join(plan.left_out) or "nothing")
    return report
