"""Training recipes shipped inside the package, usable by name from any folder.

``aft-hf train --config tiny_offline`` (or ``load_config("aft_vit_b16_huber")``) finds
``aft_hf/recipes/tiny_offline.yaml``. The files live here, once; the top-level ``configs/*.yaml``
of a clone are links to them, so ``--config configs/tiny_offline.yaml`` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

RECIPES_DIR = Path(__file__).resolve().parent


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line summary (the first comment line of the file)."""
    out = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
        out[path.stem] = first.lstrip("# ").strip()
    return out


def resolve_config_path(spec: Union[str, Path]) -> Path:
    """A config argument -> a file: an existing path wins, else a recipe name (``.yaml`` optional).

    Returns the path unchanged when it is neither, so the caller reports it as not found.
    """
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and (RECIPES_DIR / f"{name}.yaml").is_file():
        return RECIPES_DIR / f"{name}.yaml"
    return path


def format_recipes() -> str:
    """The recipe list as printed by ``aft-hf train --list-configs`` and ``--help``."""
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    return "\n".join(f"  {name:<{width}}  {summary}" for name, summary in recipes.items())
