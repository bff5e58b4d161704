"""Constants shared by several layers (a leaf module: it imports nothing from aft_hf).

``figures`` and ``world`` need CLIP's normalisation and ``model`` needs the shipped world base's
location; keeping them here means none of them has to import the others.
"""

from pathlib import Path

VERSION = "0.1.0"
"""The package version (``aft_hf.__version__``; setup.cfg reads it from here)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP's per-channel pixel mean (OpenAI), the default when a checkpoint has no image processor."""
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's per-channel pixel std (OpenAI)."""
BUILTIN_PREFIX = "builtin:"
"""Model and dataset names with this prefix are built or shipped by the package, not fetched."""
WORLD_CLIP_DIR = Path(__file__).resolve().parent / "world" / "base"
"""The small CLIP pretrained in the synthetic world, shipped with the package (``builtin:world-clip``)."""

IMPORT_FILE = "aft_import.json"
"""Provenance of a converted open_clip checkpoint, written by ``aft_hf.openclip.importer`` and read by the model card."""

REPORT_SCHEMA_VERSION = 1
"""Version of the ``report.json`` schema written by ``aft-hf evaluate`` (documented in ``aft_hf/evaluate/report.py``)."""

OVERLAP_KEY = "training_overlap"
"""Report key of the warning that the evaluated images come from the model's training split."""

CONFIG_FILE = "aft_config.yaml"
"""The resolved training config, saved in every checkpoint and exported folder (the recipe a card shows)."""

CONFIG_CHANGES_FILE = "config_changes.json"
"""Beside ``aft_config.yaml`` in ``final/`` when a resume changed settings: ``[{"step": N, "changes": [...]}]``
(``aft_config.yaml`` holds the last values only)."""

CHECKPOINT_EXPORT_FILE = "aft_checkpoint.json"
"""In a model folder exported from a training checkpoint (``aft-hf export``): its step and the run's max_steps."""

PROGRESS_FILE = "progress.json"
"""Where a checkpoint's run is (``aft_hf.checkpointing.Progress``): step, position in the epoch, working directory."""

SUMMARY_FILE = "train_summary.json"
"""What a finished training run writes beside ``final/`` in its output_dir (steps, images seen, log history)."""

LLAVA_FEATURE_LAYER = -2
"""The hidden state LLaVA-1.5 reads from its vision tower (``vision_feature_layer``): the default of
``model.feature_layer``."""
