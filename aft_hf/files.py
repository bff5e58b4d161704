"""Small file helpers shared across the package."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from huggingface_hub.utils.sha import sha_fileobj


def sha256_file(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, streamed (huggingface_hub's helper, the one the Hub uses for LFS files)."""
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()
