"""aft_hf: adversarial fine-tuning (AFT) of CLIP image encoders in the Hugging Face ecosystem.

Data flow: ``data`` -> ``model`` -> ``attack`` -> ``train`` -> (``explain`` -> ``evaluate``) -> ``hub``.
"""

from .attack import AttackError, PGDAttacker, UniformNoise, attack_mode, embedding_distance
from .config import ConfigError, TrainConfig, load_config
from .constants import VERSION as __version__
from .errors import AftError, InputError
from .model import ImageEncoder, export_pretrained, load_image_encoder, save_tiny_clip
from .threat_models import ThreatModel, register_threat_model

__all__ = [
    "AftError", "AttackError", "ConfigError", "ImageEncoder", "InputError", "PGDAttacker", "ThreatModel",
    "TrainConfig", "UniformNoise", "__version__", "attack_mode", "embedding_distance", "export_pretrained",
    "load_config", "load_image_encoder", "register_threat_model", "save_tiny_clip",
]
# The training loop is ``aft_hf.train.train`` (a module-level name ``train`` here would be shadowed
# by the submodule ``aft_hf.train`` as soon as it is imported).
