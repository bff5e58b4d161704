"""Export a transformers CLIP folder (an AFT export or a converted checkpoint) as an open_clip state dict.

    folder (CLIPModel or CLIPVisionModelWithProjection, save_pretrained)
        -> transformers names -> open_clip names (q/k/v -> in_proj, visual_projection.weight^T -> proj)
        -> FILE.safetensors (+ FILE.json, an open_clip model config, for a full CLIPModel)

A full ``CLIPModel`` gives a whole open_clip ``CLIP`` state dict (``visual.*``, text tower,
``logit_scale``): ``open_clip.create_model(arch, pretrained=FILE)`` loads it. An image-tower-only
folder gives ``model.visual.state_dict()`` (bare names, as the released FARE/TeCoA image encoders):
``open_clip.create_model(arch, pretrained_image_path=FILE)`` or ``model.visual.load_state_dict``.
The mapping is the inverse of :func:`aft_hf.openclip.importer.to_transformers`; the two are checked against
the real open_clip package in the tests.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import AftError
from ..files import respect_umask
from ..model import WEIGHTS_DTYPE, run_folder_hint
from .importer import ARCHS, VitGeometry, arch_geometry
from .keymap import text_to_open_clip, vision_to_open_clip

logger = logging.getLogger(__name__)

WRITER = "aft-hf export-openclip"
"""Stored in the safetensors metadata: a file with it may be replaced with --overwrite."""
TEXT_ARCHS: dict[str, dict] = {  # open_clip's built-in text towers of the OpenAI geometries
    "ViT-B-32": dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
    "ViT-B-16": dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
    "ViT-L-14": dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12),
}
LEGACY_EOS_ID = 2
"""transformers pools CLIP text at argmax(input_ids) when eos_token_id is 2 (the original configs)."""


class ExportError(AftError, ValueError):
    """The folder cannot be written as an open_clip state dict; the message says why."""


def open_clip_model_cfg(config, full: bool, image_config=None) -> dict:
    """The open_clip ``model_cfg`` (``add_model_config`` JSON) of a transformers CLIP config."""
    vc = config.vision_config if full else config
    cfg = {"embed_dim": config.projection_dim, "quick_gelu": vc.hidden_act == "quick_gelu",
           "vision_cfg": {"image_size": vc.image_size, "layers": vc.num_hidden_layers, "width": vc.hidden_size,
                          "head_width": vc.hidden_size // vc.num_attention_heads,
                          "mlp_ratio": vc.intermediate_size / vc.hidden_size, "patch_size": vc.patch_size}}
    if full:
        tc = config.text_config
        text = {"context_length": tc.max_position_embeddings, "vocab_size": tc.vocab_size, "width": tc.hidden_size,
                "heads": tc.num_attention_heads, "layers": tc.num_hidden_layers,
                "mlp_ratio": tc.intermediate_size / tc.hidden_size}
        if tc.eos_token_id != LEGACY_EOS_ID:  # pool at the first eos token, as transformers does
            text.update(pool_type="eos", eos_id=tc.eos_token_id)
        cfg["text_cfg"] = text
    return cfg


def config_problem(folder: Union[str, Path], vision_only: bool = False) -> Optional[str]:
    """Why export-openclip refuses ``folder``, read from its ``config.json`` alone (None: it exports it).

    The model card asks this before recommending export-openclip; :func:`export_open_clip` raises it.
    """
    from transformers import AutoConfig

    from ..model import _vision_class

    folder = Path(folder)
    if not folder.exists():
        return f"'{folder}' does not exist: give the folder of a transformers CLIP model (e.g. <output_dir>/final)"
    if not (folder / "config.json").is_file():
        return f"'{folder}' is not a transformers model folder (no config.json){run_folder_hint(folder)}"
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in ("clip", "clip_vision_model"):
        return f"'{folder}' holds a '{config.model_type}' model; export-openclip writes CLIP ViTs"
    full = config.model_type == "clip" and not vision_only
    if config.model_type == "clip_vision_model" and _vision_class(config).__name__ == "CLIPVisionModel":
        return NO_PROJECTION.format(folder=folder)
    vc = config.vision_config if config.model_type == "clip" else config
    acts = {vc.hidden_act, config.text_config.hidden_act} if full else set()
    if len(acts) > 1:
        return (f"the image and text towers use different activations ({', '.join(sorted(acts))}); an "
                "open_clip CLIP has one: pass --vision-only to export the image tower alone")
    for name, eps in (("vision", vc.layer_norm_eps),) + ((("text", config.text_config.layer_norm_eps),)
                                                          if full else ()):
        if abs(eps - 1e-5) > 1e-12:
            return f"the {name} tower's layer_norm_eps is {eps}; open_clip's layers use 1e-5"
    return None


NO_PROJECTION = ("'{folder}' has no visual projection (a CLIPVisionModel without projection): open_clip's image "
                 "tower needs one; export the full CLIPModel it came from")


def _load(folder: Path, vision_only: bool):
    """(the model, whether it is a full CLIPModel) with every weight the export needs present."""
    from transformers import AutoConfig, CLIPModel, CLIPVisionModelWithProjection

    problem = config_problem(folder, vision_only)
    if problem:
        raise ExportError(problem)
    config = AutoConfig.from_pretrained(folder)
    full = config.model_type == "clip" and not vision_only
    cls = CLIPModel if full else CLIPVisionModelWithProjection
    from ..load_report import held_load_report

    with held_load_report() as report:  # a refusal below is the last line printed, not transformers' table
        model, info = cls.from_pretrained(folder, output_loading_info=True, dtype=WEIGHTS_DTYPE)
        if any(k.startswith("visual_projection") for k in info.get("missing_keys", ())):
            raise ExportError(NO_PROJECTION.format(folder=folder))
        # --vision-only of a full CLIP: the text tower's weights are left out on purpose, not news
        report.expected = config.model_type == "clip" and vision_only and not any(
            info.get(k) for k in ("missing_keys", "mismatched_keys", "error_msgs"))
    return model, full


def _check_arch(arch: str, cfg: dict, full: bool) -> Optional[str]:
    """The open_clip model name for ``arch`` (None for ``auto`` on a custom geometry); a mismatch raises."""
    vis = cfg["vision_cfg"]
    g = VitGeometry(width=vis["width"], layers=vis["layers"], heads=vis["width"] // vis["head_width"],
                    mlp=round(vis["mlp_ratio"] * vis["width"]), patch=vis["patch_size"], image=vis["image_size"],
                    embed=cfg["embed_dim"])
    named = arch_geometry(arch)
    if named is None:
        return next((name for name, known in ARCHS.items() if known == g and (not full or _text_is(name, cfg))), None)
    name = next(n for n, known in ARCHS.items() if known == named)
    if named != g or (full and not _text_is(name, cfg)):
        raise ExportError(f"the folder is not {arch}: its open_clip config would be {json.dumps(cfg)} "
                          "(use --arch auto: a config file for its own geometry is written)")
    return name


def _text_is(name: str, cfg: dict) -> bool:
    text = cfg["text_cfg"]
    return all(text.get(k) == v for k, v in TEXT_ARCHS[name].items()) and text.get("pool_type", "argmax") == "argmax"


def _check_target(out: Path, folder: Path, overwrite: bool) -> None:
    from safetensors import safe_open

    if out.suffix != ".safetensors":
        raise ExportError(f"--out '{out}' must be a .safetensors file")
    if folder == out or folder in out.parents:
        raise ExportError(f"--out '{out}' lies inside the model folder '{folder}': write it elsewhere")
    if out.is_dir():
        raise ExportError(f"--out '{out}' is a folder: give a file name ending in .safetensors")
    try:
        with safe_open(str(out), "pt") as f:
            ours = (f.metadata() or {}).get("writer") == WRITER
    except Exception:  # absent, unreadable or another format: not ours
        ours = False
    for path in (out, out.with_suffix(".json")):  # the config JSON belongs to the weights file beside it
        if not path.exists():
            continue
        if not overwrite:
            raise ExportError(f"'{path}' exists (pass --overwrite to replace a file that export-openclip wrote)")
        if not ours:
            raise ExportError(f"'{path}' was not written by export-openclip: refusing to replace it; choose another "
                              "--out")


def export_open_clip(folder: Union[str, Path], out: Union[str, Path], arch: str = "auto", vision_only: bool = False,
                     overwrite: bool = False) -> dict:
    """Write ``folder`` as an open_clip state dict at ``out`` (safetensors). Returns what was written and
    how to load it: ``{"file", "config_file", "model_name", "full", "quick_gelu", "load"}``."""
    from safetensors.torch import save_file

    folder, out = Path(folder).resolve(), Path(out).expanduser().resolve()
    _check_target(out, folder, overwrite)
    model, full = _load(folder, vision_only)
    cfg = open_clip_model_cfg(model.config, full)
    name = _check_arch(arch, cfg, full)
    sd = model.state_dict()
    layers = cfg["vision_cfg"]["layers"]
    if full:
        state = {f"visual.{k}": v for k, v in vision_to_open_clip(sd, layers).items()}
        state.update(text_to_open_clip(sd, model.config.text_config.num_hidden_layers))
    else:
        state = vision_to_open_clip(sd, layers)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    config_file = out.with_suffix(".json") if full else None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", "writer": WRITER, "source": folder.name})
        respect_umask(tmp)  # mkstemp and safetensors make 0600 files
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if config_file is not None:
        config_file.write_text(json.dumps(cfg, indent=2) + "\n")  # open_clip's format: the model_cfg itself
    return {"file": out, "config_file": config_file, "model_name": name, "full": full,
            "quick_gelu": cfg["quick_gelu"], "load": _load_hint(out, config_file, name, full, cfg)}


def _load_hint(out: Path, config_file: Optional[Path], name: Optional[str], full: bool, cfg: dict) -> str:
    """A snippet that runs as it is (every name it uses is imported or assigned in it)."""
    gelu = ", force_quick_gelu=True" if cfg["quick_gelu"] else ""
    weights = f"pretrained='{out}'" if full else f"pretrained_image_path='{out}'"
    lines = ["import open_clip"]
    if name is not None:
        lines.append(f"model = open_clip.create_model('{name}', {weights}{gelu})")
    elif config_file is not None:
        lines += [f"open_clip.add_model_config('{config_file}')",
                  f"model = open_clip.create_model('{config_file.stem}', {weights})"]
    else:  # an image tower of its own geometry: no open_clip model name and no text tower to build a CLIP
        lines = ["import safetensors.torch",
                 "from open_clip.model import _build_vision_tower",
                 f"visual = _build_vision_tower({cfg['embed_dim']}, {cfg['vision_cfg']!r}, "
                 f"quick_gelu={cfg['quick_gelu']})",
                 f"visual.load_state_dict(safetensors.torch.load_file('{out}'))"]
    return "\n".join(lines)
