"""The model card of an AFT checkpoint, built from facts found in the exported folder only.

``huggingface_hub``'s ``ModelCardData``/``ModelCard`` do the format; this module decides the content:
``config.json`` (architecture), ``aft_config.yaml`` (the training recipe, written by the trainer),
``aft_import.json`` (provenance of a converted checkpoint), the evaluate report (its metrics'
results, :mod:`aft_hf.results`: zero-shot classification scalars -> ``model-index``, every
number -> the results table) and figures. A section without data is left out.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .constants import CHECKPOINT_EXPORT_FILE, CONFIG_CHANGES_FILE, CONFIG_FILE, IMPORT_FILE, LLAVA_FEATURE_LAYER, OVERLAP_KEY  # noqa: F401  (provenance of a converted checkpoint; card.IMPORT_FILE stays)
from .constants import VERSION as __version__
from .errors import AftError
from .objectives import OBJECTIVES, EmbeddingObjective
from .published import LOCAL_PREFIX
from .results import Scalar, report_results
from .threat_models import THREAT_MODELS

logger = logging.getLogger(__name__)

"""The resolved training config, written into the export by the trainer."""
REPORT_FILE = "eval_report.json"
"""The evaluate report, copied into the Hub folder so the card's numbers can be traced."""
AFT_TAGS = ["clip", "adversarial-training", "robustness", "interpretability", "aft"]
RECIPE_SECTIONS = ("model", "data", "attack", "optim")
"""Sections of aft_config.yaml that define the recipe (output paths, logging and hub settings do not)."""


class CardError(AftError, ValueError):
    """The folder cannot be described by a card (not a CLIP export), or a card field is invalid."""


# The license ids the Hub accepts in a card's metadata (https://huggingface.co/docs/hub/repositories-licenses).
# huggingface_hub has no constant for them; the Hub rejects any other value, so we check before pushing.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())


def check_license(license: Optional[str]) -> None:
    """Refuse a license id the Hub would reject (``other`` plus a LICENSE file covers the rest)."""
    if license is not None and license not in HUB_LICENSES:
        close = sorted(x for x in HUB_LICENSES if x.split("-")[0] == license.lower().split("-")[0].split(" ")[0])
        hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
        raise CardError(f"--license '{license}' is not a Hub license id{hint}: use one of the ids listed at "
                        "https://huggingface.co/docs/hub/repositories-licenses (e.g. apache-2.0, mit, "
                        "cc-by-nc-4.0), or 'other' and add a LICENSE file")


# --------------------------------------------------------------------------- report -> model-index

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


ZS = "zero-shot-image-classification"
SETUP_FIELDS = (("dataset", "dataset"), ("split", "split"), ("num_samples", "images"),
                ("skipped_images", "unreadable images skipped"), ("num_classes", "classes"),
                ("class_names_source", "class names"), ("num_templates", "prompt templates"),
                ("text_model", "text tower"), ("seed", "seed"))


def report_rows(report: dict) -> list[tuple[Scalar, Optional[str], float]]:
    """Every numeric result of the report as (scalar, setting, value), in report order.

    Read from the report's ``results`` (:mod:`aft_hf.results`; an older report without them
    through the registered metrics), so the card names no metric: a scalar's ``quantity`` is the row's
    name, ``better`` its direction, ``baseline`` sends it to the reference table and ``hub_metric``
    into ``model-index``. Numbers written as null (NaN, top-5 with fewer than 5 classes) are left out.
    """
    return [(s, s.setting, s.value) for r in report_results(report).values() for s in r.scalars
            if _is_number(s.value)]


def sub_reports(report: dict) -> list[dict]:
    """The evaluate-style reports a report holds: itself, or, for an ``aft-hf benchmark`` card report, its
    ``reports`` (one per dataset)."""
    subs = report.get("reports")
    return [r for r in subs if isinstance(r, dict)] if isinstance(subs, list) else [report]


def _with_caveat(name: str, caveat: str) -> str:
    """``name`` marked with ``caveat`` once, at its end (a benchmark's attack name, inside it, says "not the
    protocol's" too: that mention is dropped from the metric name, not repeated)."""
    return name.replace(", " + caveat.strip(" ()"), "") + caveat if caveat else name


def eval_results_from_report(report: dict) -> list[EvalResult]:
    """model-index entries for the report's zero-shot classification results (values exactly as reported).

    Baselines are never entries; a report on a local folder gives none (a path is no dataset id, and
    the card must not publish it): the results table in the text still shows every number.
    """
    if isinstance(report.get("reports"), list):
        return [e for sub in sub_reports(report) for e in eval_results_from_report(sub)]
    dataset = str(report.get("dataset") or "")
    if not dataset or _is_local_path(dataset):
        return []
    attack = (report.get("metrics") or {}).get("robust_attack") or {}
    caveat = (" (not the protocol's)" if str(attack.get("protocol", "")).startswith("not the protocol's") else "")
    # the dataset's Hub id, else a slug of its name (model-index needs an identifier; the name is shown as is)
    dataset_type = dataset if _DATASET_NAME.match(dataset) else re.sub(r"[^\w.]+", "-", dataset).strip("-").lower()
    return [
        EvalResult(
            task_type=ZS, task_name=s.task, dataset_type=dataset_type, dataset_name=dataset,
            dataset_split=report.get("split"), metric_type=s.hub_metric,
            metric_name=_with_caveat(f"{s.quantity}, {s.setting_kind} {setting}" if setting else s.quantity, caveat),
            metric_value=value, metric_config=f"{s.setting_kind}={setting}" if setting else None,
            metric_args={s.setting_kind: setting} if setting else None,
        )
        for s, setting, value in report_rows(report) if s.hub_metric and not s.baseline
    ]


# --------------------------------------------------------------------------- facts about the folder


def _read_yaml(path: Path) -> Optional[dict]:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A Hub dataset id, with or without the owner (``imagenet-1k``, ``ILSVRC/imagenet-1k``)."""


def _is_local_path(ref: str) -> bool:
    """A folder on the author's machine, or its published marker (``local:NAME``, :mod:`aft_hf.published`)."""
    return (ref.startswith(LOCAL_PREFIX) or Path(ref).expanduser().exists() or ref.startswith(("/", ".", "~"))
            or "\\" in ref or ref.count("/") > 1)


def display_ref(ref: Optional[str]) -> Optional[str]:
    """How a model or data reference is shown in a card: Hub ids and builtin names as they are, a local
    path by its last component only (a card must not publish the author's file system)."""
    if not ref:
        return ref
    if ref.startswith(LOCAL_PREFIX):  # a published config's marker (aft_hf.published)
        return f"local folder {ref[len(LOCAL_PREFIX):]}"
    cached = hub_id_of(ref) if _CACHE_PATH.search(ref) else None
    if cached:
        return cached
    if ref.startswith("builtin:") or not _is_local_path(ref):
        return ref
    return f"local folder {Path(ref).name or ref}"
_CACHE_PATH = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots")


def hub_id_of(name_or_path: Optional[str]) -> Optional[str]:
    """The Hub repo id a model reference stands for, or None (local folders, builtin models).

    A folder inside the Hub cache (``.../models--org--name/snapshots/...``) maps back to ``org/name``.
    """
    if not name_or_path or name_or_path.startswith("builtin:"):
        return None
    cached = _CACHE_PATH.search(name_or_path)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    if Path(name_or_path).exists() or not _HUB_ID.match(name_or_path):
        return None
    return name_or_path


def _dataset_id(name: Optional[str]) -> Optional[str]:
    """A Hub dataset id from the recipe's ``data.dataset`` (not ``imagefolder``, builtin or local)."""
    if not name or name.startswith("builtin:") or Path(name).exists() or not _HUB_ID.match(name):
        return None
    return name


def base_license(base: Optional[str], allow_network: bool = False) -> Optional[str]:
    """The license in the base model's card: a local folder's README.md, or the Hub card.

    Without ``allow_network`` only the local Hub cache is consulted, so a dry run never touches
    the network. Returns None when the license is not known (the card then states none).
    """
    if not base or base.startswith("builtin:"):
        return None
    readme: Optional[Path] = Path(base) / "README.md" if Path(base).is_dir() else None
    repo_id = hub_id_of(base)
    if (readme is None or not readme.is_file()) and repo_id:
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            if allow_network:
                readme = Path(hf_hub_download(repo_id, "README.md"))
            else:
                cached = try_to_load_from_cache(repo_id, "README.md")
                readme = Path(cached) if isinstance(cached, str) else None
        except Exception as e:  # no card, no network, gated: the license stays unknown
            logger.info("license of base '%s' not found (%s)", repo_id, type(e).__name__)
            readme = None
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data.license
    except Exception:  # an unparsable base card: unknown
        return None


def folder_class(config: dict) -> str:
    """The class the folder was saved as: ``CLIPModel``, ``CLIPVisionModelWithProjection`` or a bare
    ``CLIPVisionModel`` (no projection), decided as :func:`aft_hf.model.load_image_encoder` decides it."""
    from types import SimpleNamespace

    from .model import _vision_class

    full_classes = _full_classes()
    if config.get("model_type") in full_classes:
        return full_classes[config["model_type"]]
    return _vision_class(SimpleNamespace(architectures=config.get("architectures"),
                                         model_type=config.get("model_type", ""))).__name__


def _full_classes() -> dict[str, str]:
    """``model_type`` of a full (image + text) checkpoint -> its class name, for every family in ``FAMILIES``."""
    from .model import FAMILIES

    return {f.full_type: f.full_class.__name__ for f in FAMILIES.values()}


def _geometry(config: dict) -> tuple[bool, dict]:
    """(is a full image-text model, the vision tower's config) from ``config.json``: CLIP or SigLIP."""
    from .model import FAMILIES

    if config.get("model_type") in _full_classes():
        vision = dict(config.get("vision_config") or {})
        vision.setdefault("projection_dim", config.get("projection_dim"))
        return True, vision
    if config.get("model_type") in {f.vision_type for f in FAMILIES.values()}:
        return False, config
    raise CardError(f"config.json has model_type '{config.get('model_type')}': aft_hf publishes the models of its "
                    f"tower families ({', '.join(FAMILIES)})")


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if _is_number(v) and not isinstance(v, int):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


# --------------------------------------------------------------------------- card text


def _attack_sentence(attack: dict) -> str:
    norm, eps, eps2 = attack.get("norm"), attack.get("eps"), attack.get("eps2")
    threat = THREAT_MODELS.get(norm)  # the registered threat model words its own budget
    budget = (threat.description.format(eps=_fmt(eps), eps2=_fmt(eps2)) if threat and threat.description
              else f"a '{norm}' budget of {_fmt(eps)}/255")
    return (f"The perturbation is found by {attack.get('steps')} steps of PGD with momentum "
            f"(step {_fmt(attack.get('alpha'))}/255) inside {budget}.")


HEADLESS_SIGLIP = "SiglipVisionModel (headless)"
"""The card's name for a ``SiglipVisionModel`` folder saved without its pooling head (``vision_use_head: false``)."""


def _card_kind(cls: str, vision: dict) -> str:
    """``cls``, or :data:`HEADLESS_SIGLIP` for a SigLIP tower saved without its attention-pooling head."""
    return HEADLESS_SIGLIP if cls == "SiglipVisionModel" and vision.get("vision_use_head", True) is False else cls


EMBEDDING_TEXT = {
    "pooled": "{normalised}embedding (the projected pooled output; the pooled output itself for a tower without "
              "projection)",
    "patch_tokens": "patch-token features ({normalised}hidden states of {layer}, {tokens}: "
                    "what LLaVA-style vision-language models read from their image tower)",
}
"""How each ``model.embedding`` of the recipe is described (the quantity the AFT objective compares)."""


def _method_section(recipe: dict, base: str, cls: str = "CLIPModel") -> str:
    model, attack, optim = recipe.get("model", {}), recipe.get("attack", {}), recipe.get("optim", {})
    embedding = model.get("embedding") or "pooled"
    layer = int(model.get("feature_layer", LLAVA_FEATURE_LAYER))
    what = EMBEDDING_TEXT.get(embedding, f"{{normalised}}'{embedding}' embedding").format(
        normalised="per-token L2-normalised " if model.get("output_normalize") and embedding == "patch_tokens"
        else "L2-normalised " if model.get("output_normalize") else "",
        layer="the penultimate layer" if layer == LLAVA_FEATURE_LAYER else f"hidden state {layer} (`model.feature_layer`)",
        tokens="every patch: SigLIP has no class token" if cls.startswith("Siglip") else "class token dropped")
    if attack.get("mode") == "noise":
        training = ("**This is a control run**: the adversarial attack was replaced by uniform random noise of the "
                    f"same budget ({attack.get('norm')}, {_fmt(attack.get('eps'))}/255), to separate the adversarial "
                    "effect from plain noise augmentation. It is not an adversarially trained model.")
    else:
        training = _attack_sentence(attack)
    training += _lora_sentence(recipe.get("lora") or {})
    objective = recipe.get("objective") or EmbeddingObjective.name
    if objective != EmbeddingObjective.name:
        return _other_objective_section(objective, base, training, optim, cls)
    return "\n".join([
        "## Method",
        "",
        f"The image encoder of `{base}` was fine-tuned with AFT (adversarial fine-tuning, Gong et al., ICLR 2025), "
        "an unsupervised objective that needs images only, no labels or captions. The fine-tuned encoder "
        f"f_theta is trained to keep its {what} of a perturbed image close (squared L2 distance) "
        "to what the frozen original encoder f_theta0 gives for the clean image, the perturbation being "
        "chosen to push the two apart:",
        "",
        "    min_theta E_x || g(f_theta(x + delta*)) - g(f_theta0(x)) ||^2,   "
        "delta* = argmax_delta || g(f_theta(x + delta)) - g(f_theta0(x)) ||^2 - R(delta)",
        "",
        training,
        f"Optimiser: AdamW, lr {_fmt(optim.get('lr'))}, {optim.get('max_steps')} steps of {optim.get('batch_size')} "
        f"images, {optim.get('scheduler')} schedule with {optim.get('warmup_steps')} warm-up steps.",
        "",
        _use_text(cls) + ("" if attack.get("mode") == "noise" else
                         " Adversarial training with a budget penalises the dual norm of the input gradient; the AFT "
                         "paper finds sparser, more object-focused gradient saliency maps after it than for the base "
                         "model (a finding about the method: for this model, see the saliency metrics in the results, "
                         "where measured)."),
    ])


def _lora_sentence(lora: dict) -> str:
    """What a LoRA run trained (empty without LoRA): the weights here have the adapters merged in."""
    if not lora.get("r"):
        return ""
    modules = ", ".join(f"`{m}`" for m in lora.get("target_modules") or [])
    return (f" Only LoRA adapters were trained (peft; rank {lora['r']}, alpha {_fmt(lora.get('alpha'))}"
            + (f", on {modules}" if modules else "") + "); the weights in this repository have them merged in, so "
            "they load without peft" + ("; the adapter alone is in `adapter/`." if lora.get("save_adapter") else "."))


def _other_objective_section(objective: str, base: str, training: str, optim: dict, cls: str) -> str:
    """The Method section of a run trained with another registered objective (TeCoA, ...): its own formula
    and reference, read from the objective's class."""
    registered = OBJECTIVES.get(objective)
    formula = registered.formula if registered else ""
    cited = f" ({registered.citation})" if registered is not None and registered.citation else ""
    return "\n".join([
        "## Method", "",
        f"The image encoder of `{base}` was fine-tuned adversarially with the `{objective}` objective{cited}"
        + (" (supervised: it needs class labels; the text tower, frozen, gives the class embeddings):"
           if registered is not None and registered.needs_labels else ":"),
        "", f"    {formula}" if formula else "", "", training,
        f"Optimiser: AdamW, lr {_fmt(optim.get('lr'))}, {optim.get('max_steps')} steps of {optim.get('batch_size')} "
        f"images, {optim.get('scheduler')} schedule with {optim.get('warmup_steps')} warm-up steps.", "",
        _use_text(cls),
    ])


USE_TEXT = {
    "CLIPModel": "The text encoder is not changed, so the model is used for zero-shot classification exactly like "
                 "its base.",
    "CLIPVisionModelWithProjection": "This folder holds the image tower and its projection only: pair it with the "
                                     "base's text tower for zero-shot classification.",
    "SiglipModel": "The text encoder is not changed, so the model classifies zero-shot (sigmoid scores) exactly "
                   "like its base.",
    "SiglipVisionModel": "This folder holds the SigLIP image tower with its attention-pooling head: pair it with the "
                         "base's text tower for zero-shot classification.",
    HEADLESS_SIGLIP: "This folder holds the SigLIP image tower without its attention-pooling head: it gives the patch "
                     "tokens that a vision-language model reads (LLaVA-OneVision keeps its tower this way), and no "
                     "image embedding, so it cannot classify zero-shot.",
    "CLIPVisionModel": "This folder holds the bare image tower (no projection, no text tower): it gives hidden "
                       "states for a LLaVA-style model, not CLIP's joint image-text embedding.",
}


def _use_text(cls: str) -> str:
    """How the folder is used, by its class; a family added to ``aft_hf.model.FAMILIES`` reads as a full model or
    an image tower by its class name."""
    if cls in USE_TEXT:
        return USE_TEXT[cls]
    if "Vision" in cls:
        return "This folder holds the image tower only: pair it with the base's text tower for zero-shot classification."
    return "The text encoder is not changed, so the model is used for zero-shot classification exactly like its base."


def _checkpoint_sentence(info: Optional[dict]) -> list[str]:
    """The line saying that these weights are a checkpoint of a run that went on (``aft-hf export``)."""
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        return []
    total = info.get("max_steps")
    if isinstance(total, int) and info["step"] >= total:  # the last checkpoint of the schedule: the whole run
        return ["", f"These weights are the run's checkpoint at step {info['step']}, the last of the schedule "
                    f"(`{CHECKPOINT_EXPORT_FILE}`, exported with `aft-hf export`)."]
    of = f" of the {total} the recipe sets" if isinstance(total, int) else ""
    return ["", f"**These weights are the training checkpoint at step {info['step']}{of}** (`{CHECKPOINT_EXPORT_FILE}`), "
                "exported with `aft-hf export`: the learning-rate schedule in the table ran only up to that step."]


def _recipe_section(recipe: dict, changes: Optional[list] = None, checkpoint: Optional[dict] = None) -> str:
    from .config import config_from_dict, unread_fields

    try:
        unread = set(unread_fields(config_from_dict(recipe), given_only=False))
    except (TypeError, ValueError, KeyError, AttributeError):  # a recipe this version cannot read: mark nothing
        unread = set()
    rows = ["## Training recipe", "",
            f"Exactly as in `{CONFIG_FILE}` in this repository (budgets `eps`, `eps2`, `alpha`, `noise_std` in "
            "1/255 pixel units; pixels in [0, 1], the checkpoint's own mean/std normalisation inside the model):", "",
            "| parameter | value |", "|---|---|"]
    sections = RECIPE_SECTIONS + (("lora",) if (recipe.get("lora") or {}).get("r") else ())
    for section in sections:
        for key, value in (recipe.get(section) or {}).items():
            if isinstance(value, str) and _is_local_path(value):
                value = display_ref(value)
            note = " (not read by this run)" if f"{section}.{key}" in unread else ""
            rows.append(f"| `{section}.{key}` | {_fmt(value)}{note} |")
    if "seed" in recipe:
        rows.append(f"| `seed` | {_fmt(recipe['seed'])} |")
    rows += _checkpoint_sentence(checkpoint)
    if changes:  # a resume with --allow_config_change: the table holds the last values
        rows += ["", f"The run was resumed with changed settings (`{CONFIG_CHANGES_FILE}`); the table shows the values "
                 "in force at the end:"] + [f"- from step {c.get('step')}: {'; '.join(map(str, c.get('changes') or []))}"
                                           for c in changes if isinstance(c, dict)]
    return "\n".join(rows)


def _import_section(info: dict) -> str:
    lines = ["## Conversion", "",
             f"Converted by `aft-hf import-checkpoint` from the open_clip image-encoder checkpoint "
             f"`{info.get('source_checkpoint')}`"
             + (f" (sha256 `{info['sha256']}`)" if info.get("sha256") else "")
             + f", architecture {info.get('arch')}, fused with the text tower of `{display_ref(info.get('base'))}`.",
             "The image encoder's weights are those of the checkpoint; the text tower, tokenizer and processor "
             "are the base model's."]
    if info.get("ignored_keys"):
        lines.append(f"Keys of the checkpoint not used: {len(info['ignored_keys'])} "
                     f"({', '.join(info['ignored_keys'][:5])}{', ...' if len(info['ignored_keys']) > 5 else ''}).")
    return "\n".join(lines)


def _results_section(report: dict) -> Optional[str]:
    if isinstance(report.get("reports"), list):  # a benchmark: one sub-section per dataset
        parts = [_results_section(sub) for sub in sub_reports(report)]
        parts = [p.replace("## Evaluation", f"### {display_ref(sub.get('dataset'))}", 1)
                 for p, sub in zip(parts, sub_reports(report)) if p]
        return "\n\n".join(["## Evaluation", *parts]) if parts else None
    rows = report_rows(report)
    if not rows:
        return None
    setup = []
    for key, label in SETUP_FIELDS:
        value = report.get(key)
        if value not in (None, ""):
            setup.append(f"{label} `{display_ref(value) if key in ('dataset', 'text_model') else value}`")
    setup += [t for t in (r.setup_text() for r in report_results(report).values()) if t]
    lines = ["## Evaluation", "",
             f"Measured with `{report.get('measured_with', 'aft-hf evaluate')}` (report: `{REPORT_FILE}`)"
             + (": " + ", ".join(setup) if setup else "") + "."]
    if report.get(OVERLAP_KEY):  # written by aft-hf evaluate: these images come from the model's training split
        lines += ["", f"**Warning: {report[OVERLAP_KEY]}.**"]
    lines += ["", "| metric | setting | value | better |", "|---|---|---|---|"]
    lines += [f"| {s.quantity} | {_fmt(setting) if setting else ''} | {_fmt(value)} | {s.better or ''} |"
              for s, setting, value in rows if not s.baseline]
    baselines = {(s.quantity, setting): value for s, setting, value in rows if s.baseline}
    if baselines:
        lines += ["", "Reference levels on the same images (what a random saliency map or chance gives; not results "
                  "of this model):", "", "| metric | baseline | value |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(setting)} | {_fmt(value)} |" for (name, setting), value in baselines.items()]
    citations = report.get("citations")
    if isinstance(citations, dict) and citations:
        lines += ["", "Metric references: " + "; ".join(f"{k}: {_fmt(v)}" for k, v in citations.items()) + "."]
    return "\n".join(lines)


_IMAGE = 'image = Image.open("cat.jpg")  # your image'
_TOWER = "tower = CLIPVisionModel.from_pretrained(\"{repo}\")  # hidden states: the vision tower of LLaVA-style models"
_TOWER_CALL = "out = tower(**processor(images=image, return_tensors=\"pt\"), output_hidden_states=True)"


def _features(layer: int, siglip: bool = False) -> str:
    """The snippet line reading patch tokens at hidden state ``layer`` (the one AFT trained, or LLaVA's default)."""
    which = ("penultimate layer (LLaVA's default)" if layer == LLAVA_FEATURE_LAYER
             else f"hidden state {layer}, the layer AFT trained")
    if siglip:
        return f"features = out.hidden_states[{layer}]  # {which}: every patch (SigLIP has no class token)"
    return f"features = out.hidden_states[{layer}][:, 1:]  # {which}, class token dropped"


def _siglip_snippet(repo: str, cls: str, layer: int = LLAVA_FEATURE_LAYER) -> list[str]:
    """A SigLIP folder's usage: sigmoid zero-shot scores (full model), the pooled output (where the tower has its
    pooling head), the patch tokens of hidden state ``layer``."""
    name = "SiglipVisionModel" if cls == HEADLESS_SIGLIP else cls  # the class in code
    lines = ["from PIL import Image", f"from transformers import SiglipImageProcessorPil, {name}"
             + (", pipeline" if cls == "SiglipModel" else ""), "", _IMAGE,
             f'processor = SiglipImageProcessorPil.from_pretrained("{repo}")  # resize, no crop',
             f'model = {name}.from_pretrained("{repo}")']
    if cls == "SiglipModel":
        lines += [f'classifier = pipeline("zero-shot-image-classification", model="{repo}")  # per-class sigmoids',
                  'print(classifier(image, candidate_labels=["a photo of a cat", "a photo of a dog"]))',
                  'embeddings = model.get_image_features(**processor(images=image, return_tensors="pt"))',
                  'embeddings = getattr(embeddings, "pooler_output", embeddings)  # the attention-pooling head',
                  'out = model.vision_model(**processor(images=image, return_tensors="pt"), output_hidden_states=True)',
                  _features(layer, siglip=True)]
    else:
        lines += ['out = model(**processor(images=image, return_tensors="pt"), output_hidden_states=True)',
                  *(["embeddings = out.pooler_output  # the attention-pooling head"] if cls != HEADLESS_SIGLIP else []),
                  _features(layer, siglip=True)]
    return lines


def _transformers_snippet(repo: str, cls: str, processor: str, layer: int = LLAVA_FEATURE_LAYER) -> list[str]:
    """Lines of the transformers usage of a folder saved as ``cls`` (each one runs on the folder); patch tokens are
    read at hidden state ``layer``."""
    if cls.startswith("Siglip"):
        return _siglip_snippet(repo, cls, layer)
    if not cls.startswith("CLIP"):  # a family added to aft_hf.model.FAMILIES: the Auto classes load it
        return ["from PIL import Image", "from transformers import AutoImageProcessor, AutoModel", "", _IMAGE,
                f'processor = AutoImageProcessor.from_pretrained("{repo}")',
                f'model = AutoModel.from_pretrained("{repo}")  # a {cls}',
                'out = model(**processor(images=image, return_tensors="pt"), output_hidden_states=True)'
                if not cls.endswith("Model") or "Vision" in cls else
                'out = model.get_image_features(**processor(images=image, return_tensors="pt"))']
    if cls == "CLIPModel":
        return ["from PIL import Image", "from transformers import CLIPModel, CLIPProcessor, CLIPVisionModel, "
                "CLIPVisionModelWithProjection, pipeline", "", _IMAGE,
                f'model = CLIPModel.from_pretrained("{repo}")  # image + text towers',
                f'processor = CLIPProcessor.from_pretrained("{repo}")',
                f'classifier = pipeline("zero-shot-image-classification", model="{repo}")',
                'print(classifier(image, candidate_labels=["a photo of a cat", "a photo of a dog"]))', "",
                f'vision = CLIPVisionModelWithProjection.from_pretrained("{repo}")  # projected image embeddings',
                'embeddings = vision(**processor(images=image, return_tensors="pt")).image_embeds',
                _TOWER.format(repo=repo), _TOWER_CALL, _features(layer)]
    lines = ["from PIL import Image", f"from transformers import CLIPImageProcessor, {cls}"
             + (", CLIPVisionModel" if cls != "CLIPVisionModel" else ""), "", _IMAGE, processor]
    if cls == "CLIPVisionModelWithProjection":
        lines += [f'vision = CLIPVisionModelWithProjection.from_pretrained("{repo}")  # projected image embeddings',
                  'embeddings = vision(**processor(images=image, return_tensors="pt")).image_embeds']
    return lines + [_TOWER.format(repo=repo), _TOWER_CALL, _features(layer)]


def _usage_section(repo: str, cls: str, folder: Path, embedding: str = "pooled", feature_layer: int = LLAVA_FEATURE_LAYER) -> str:
    """Usage snippets that run on this folder: transformers (by its class), aft_hf, and open_clip only
    where ``aft-hf export-openclip`` accepts the folder."""
    from .openclip.exporter import config_problem

    config = _read_json(folder / "config.json") or {}
    size = (_geometry(config)[1] if config else {}).get("image_size") or 224
    other_layer = feature_layer != LLAVA_FEATURE_LAYER  # patch tokens of another layer than LLaVA-1.5's
    layer = f"hidden state {feature_layer}" if other_layer else "penultimate layer"
    processor = (f'processor = CLIPImageProcessor.from_pretrained("{repo}")'
                 if (folder / "preprocessor_config.json").is_file() else
                 f'processor = CLIPImageProcessor(size={{"shortest_edge": {size}}}, '
                 f'crop_size={{"height": {size}, "width": {size}}})  # no processor saved: CLIP\'s at {size} px')
    snippet_layer = feature_layer if embedding == "patch_tokens" else LLAVA_FEATURE_LAYER
    code = ["```python", *_transformers_snippet(repo, cls, processor, snippet_layer), "```"]
    output = {"pooled": "L2-normalised image embeddings" if cls != "CLIPVisionModel"
              else "the L2-normalised pooled output (no projection in this folder)",
              "patch_tokens": f"the normalised patch tokens of the {layer}, flattened",
              }.get(embedding, embedding)
    lines = ["## Usage", "", *code, ""]
    if cls.startswith("Siglip"):
        lines += ["SigLIP scores each class with its own sigmoid (logit scale and bias), not a softmax over the "
                  "classes, and pads every prompt to the text model's full length, as the pipeline does. "
                  "Vision-language models with a SigLIP tower (LLaVA-OneVision, PaliGemma, Idefics3) read its patch "
                  "tokens; `aft-hf graft` writes this tower into such a checkpoint.", ""]
    elif not cls.startswith("CLIP"):  # a family added to aft_hf.model.FAMILIES
        lines += [f"`aft-hf graft` writes CLIP and SigLIP towers into vision-language models; a `{cls}` tower is not "
                  "among them, so this folder is used as the image-text model it is.", ""]
    elif cls == "CLIPVisionModel":
        lines += ["This folder is a bare `CLIPVisionModel` (no `visual_projection`, no text tower): it gives the "
                  "hidden states that LLaVA-style vision-language models read from their CLIP vision tower, and it can "
                  f"replace such a tower of its own geometry ({size} px; `aft-hf graft` checks). It does not give "
                  "CLIP's joint image-text embedding, so it cannot classify zero-shot by itself.", ""]
    else:
        lines += ["`CLIPVisionModel` gives the hidden states that LLaVA-style vision-language models read from their "
                  f"CLIP vision tower; this tower can replace such a tower of its own geometry ({size} px; `aft-hf "
                  "graft` checks).", ""]
    lines += ["With `aft_hf` (pixels in [0, 1], normalisation inside; for attacks and saliency maps):", "",
              f'```python\nimport torch\nfrom aft_hf import load_image_encoder\n\n'
              f'encoder = load_image_encoder("{repo}"' + (f', embedding="{embedding}"' if embedding != "pooled" else "")
              + (f", feature_layer={feature_layer}" if embedding == "patch_tokens" and other_layer else "")
              + f')\npixels = torch.rand(1, 3, {size}, {size})  # (B, 3, H, W) in [0, 1], resized '
              + ("(no crop)" if cls.startswith("Siglip") else "and cropped") + f' to {size} px\n'
              f'embeddings = encoder(pixels)  # {output}\n```']
    problem = config_problem(folder) if (folder / "config.json").is_file() else "no config.json"
    if problem is None:
        lines += ["", "With open_clip: convert a local copy with `aft-hf export-openclip` (it prints the matching "
                  "`open_clip.create_model` call):", "",
                  f"```bash\nhf download {repo} --local-dir model\n"
                  "aft-hf export-openclip model --out model_open_clip.safetensors\n```"]
    else:
        logger.info("no open_clip snippet in the card: %s", problem)
    return "\n".join(lines)


def _limitations_section(recipe: Optional[dict], imported: Optional[dict], report: Optional[dict]) -> str:
    lines = ["## Limitations", ""]
    if recipe is not None or imported is not None:
        lines.append("- Robustness holds at best inside the threat model the encoder was trained for; other "
                     "perturbations, larger budgets and stronger or adaptive attacks (e.g. AutoAttack) can break it. "
                     "Any measured robust accuracy is an upper bound: APGD-CE + APGD-T (the default of `aft-hf "
                     "evaluate`) is a strong attack, not a proof of robustness, and a fixed-step PGD estimate "
                     "over-estimates it further.")
        lines.append("- Adversarial fine-tuning usually lowers clean zero-shot accuracy compared with the base model.")
    lines.append("- Only the image encoder was changed; the text tower is the base model's, so attacks on the text "
                 "input are not addressed.")
    lines.append("- Saliency metrics depend on the explanation method, the data and the masks; a sharper map is not "
                 "proof that a prediction is right.")
    if not any(r.get("metrics") for r in sub_reports(report or {})):
        lines.append("- No evaluation is reported in this card: measure the model on your data before relying on it.")
    return "\n".join(lines)


CITATION = """## Citation

AFT, the method `aft_hf` implements:

```bibtex
@inproceedings{gong2025boosting,
  title     = {Boosting the Visual Interpretability of {CLIP} via Adversarial Fine-Tuning},
  author    = {Gong, Shizhan and Lei, Haoyu and Dou, Qi and Farnia, Farzan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}
```

FARE, the unsupervised adversarial fine-tuning objective AFT builds on:

```bibtex
@inproceedings{schlarmann2024robustclip,
  title     = {Robust {CLIP}: Unsupervised Adversarial Fine-Tuning of Vision Embeddings for Robust Large Vision-Language Models},
  author    = {Schlarmann, Christian and Singh, Naman Deep and Croce, Francesco and Hein, Matthias},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}
```"""


# --------------------------------------------------------------------------- the card


def _intro_and_architecture(cls: str, vision: dict, recipe: Optional[dict], imported: Optional[dict],
                            adversarial: bool, base_text: str) -> tuple[str, str]:
    """The card's first sentence (what made the folder) and its architecture line (the class and its geometry)."""
    arch = (f"Architecture: {'SigLIP' if cls.startswith('Siglip') else 'CLIP'} ViT, width {vision.get('hidden_size')}, "
            f"{vision.get('num_hidden_layers')} layer{'s' * (vision.get('num_hidden_layers') != 1)}, "
            f"{vision.get('num_attention_heads')} heads, patch {vision.get('patch_size')}, "
            f"{vision.get('image_size')} px"
            + {"CLIPModel": f", projection {vision.get('projection_dim')}; a full `CLIPModel` (image and text towers).",
               "CLIPVisionModelWithProjection": f", projection {vision.get('projection_dim')}; image tower with "
                                                "projection only (`CLIPVisionModelWithProjection`).",
               "CLIPVisionModel": "; a bare image tower (`CLIPVisionModel`: no projection, no text tower), the "
                                  "vision tower of LLaVA-style models.",
               "SiglipModel": "; a full `SiglipModel` (image and text towers, sigmoid zero-shot scores).",
               "SiglipVisionModel": "; the SigLIP image tower with its attention-pooling head "
                                    "(`SiglipVisionModel`).",
               HEADLESS_SIGLIP: "; the SigLIP image tower without its attention-pooling head (`SiglipVisionModel`, "
                                "`vision_use_head: false`): patch tokens only."}.get(cls, f"; a `{cls}` folder."))
    if recipe is not None:
        intro = (f"`{base_text}` with its image encoder fine-tuned by "
                 f"{'adversarial fine-tuning (AFT)' if adversarial else 'a noise-control run of AFT'} using `aft_hf`.")
    elif imported is not None:
        intro = "A released open_clip image encoder converted to the transformers CLIP format with `aft_hf`."
    else:  # a plain save_pretrained folder: a baseline, or weights trained elsewhere
        intro = (f"A {'SigLIP' if cls.startswith('Siglip') else 'CLIP'} model. This folder holds no `aft_hf` training "
                 f"record (`{CONFIG_FILE}`) or conversion record (`{IMPORT_FILE}`), so this card does not say how "
                 "its weights were trained.")
    return intro, arch


def build_model_card(folder: Union[str, Path], repo_id: Optional[str] = None, report: Optional[dict] = None,
                     figures: Optional[dict[str, str]] = None, license: Optional[str] = None,
                     allow_network: bool = False, extra_tags: Sequence[str] = ()) -> ModelCard:
    """The model card of an exported (or converted) folder.

    Args:
        folder: a folder written by ``export_pretrained`` or ``aft-hf import-checkpoint``.
        repo_id: the target repo (names the model and the usage snippets); default: the folder name.
        report: the evaluate report (dict); its numbers become ``eval_results`` and the results table.
        figures: caption -> image path *relative to the Hub folder* (embedded in the text).
        license: overrides the license inherited from the base model's card.
        allow_network: may download the base model's card to read its license.
        extra_tags: added to the tags (e.g. ``adversarial-training`` for a converted robust checkpoint).
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise CardError(f"'{folder}' is not an exported model folder (no config.json)")
    full_clip, vision = _geometry(config)
    cls = _card_kind(folder_class(config), vision)
    recipe = _read_yaml(folder / CONFIG_FILE)
    imported = _read_json(folder / IMPORT_FILE)
    base = (recipe or {}).get("model", {}).get("name_or_path") or (imported or {}).get("base")
    base_id = hub_id_of(base)
    dataset_id = _dataset_id((recipe or {}).get("data", {}).get("dataset"))
    model_name = (repo_id or folder.resolve().name).split("/")[-1]
    adversarial = recipe is not None and (recipe.get("attack") or {}).get("mode", "pgd") != "noise"
    tags = (list(AFT_TAGS) if adversarial else ["clip", "aft"] if recipe is not None
            else ["clip", "open_clip-conversion"] if imported is not None else ["clip"])
    tags += [t for t in extra_tags if t not in tags]
    results = eval_results_from_report(report) if report else []

    data = ModelCardData(
        base_model=base_id, datasets=[dataset_id] if dataset_id else None,
        license=license or base_license(base, allow_network=allow_network),
        library_name="transformers", pipeline_tag=ZS if full_clip else "image-feature-extraction",
        tags=tags, model_name=model_name, eval_results=results or None,
    )
    base_text = base_id or display_ref(base) or "the base model"
    intro, arch = _intro_and_architecture(cls, vision, recipe, imported, adversarial, base_text)
    sections = [f"# {model_name}", "", intro, "", arch]
    if recipe is not None:
        changes = _read_json(folder / CONFIG_CHANGES_FILE)
        sections += ["", _method_section(recipe, base_text, cls), "",
                     _recipe_section(recipe, changes if isinstance(changes, list) else None,
                                     _read_json(folder / CHECKPOINT_EXPORT_FILE))]
    if imported is not None:
        sections += ["", _import_section(imported)]
    results_text = _results_section(report) if report else None
    if results_text:
        sections += ["", results_text]
    if figures:
        sections += ["", "## Figures"]
        for caption, path in figures.items():
            sections += ["", f"![{caption}]({path})"]
    model_recipe = (recipe or {}).get("model") or {}
    sections += ["", _usage_section(repo_id or model_name, cls, folder, model_recipe.get("embedding") or "pooled",
                                    int(model_recipe.get("feature_layer", LLAVA_FEATURE_LAYER))), "",
                 _limitations_section(recipe, imported, report), "", CITATION, "",
                 f"<sub>Card generated by aft_hf {__version__} from the files in this repository.</sub>", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))
