"""``SHA256SUMS`` files (``sha256sum`` format): the shipped world base is verified against one."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..files import sha256_file
from .dataset import WorldError

CHECKSUM_FILE = "SHA256SUMS"


def write_checksums(folder: Union[str, Path]) -> Path:
    """Write ``SHA256SUMS`` over every other file of ``folder``."""
    folder = Path(folder)
    lines = [f"{sha256_file(p)}  {p.name}" for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUM_FILE]
    out = folder / CHECKSUM_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


def verify_checksums(folder: Union[str, Path]) -> list[str]:
    """Names of files whose SHA-256 differs from ``SHA256SUMS`` (or that are missing); empty when all match."""
    folder = Path(folder)
    sums = folder / CHECKSUM_FILE
    if not sums.is_file():
        raise WorldError(f"{folder} has no {CHECKSUM_FILE}")
    bad = []
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        p = folder / name
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(name)
    return bad
