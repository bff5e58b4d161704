"""open_clip both ways, in one place: import released checkpoints (:mod:`.importer`), export to open_clip
(:mod:`.exporter`), read checkpoint files safely (:mod:`.files`), through one key map (:mod:`.keymap`)."""

from .exporter import ExportError, export_open_clip
from .files import ConvertError
from .importer import ACTIVATIONS, ARCHS, import_checkpoint

__all__ = ["ACTIVATIONS", "ARCHS", "ConvertError", "ExportError", "export_open_clip", "import_checkpoint"]
