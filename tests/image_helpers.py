"""Image folders written on the fly for tests (a helper module: test files import it, never each other)."""

import numpy as np
from PIL import Image


def write_png_folder(folder, n: int, size: int = 40, seed: int = 0):
    """n random RGB PNGs of varied sizes in one imagefolder class."""
    rng = np.random.default_rng(seed)
    (folder / "a").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size + int(rng.integers(0, 9)), size + int(rng.integers(0, 9))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "a" / f"{i:03d}.png")
    return folder


def write_mixed_folder(root):
    """RGB, grayscale, RGBA, palette, 16-bit and CMYK images, plus one corrupt and one empty file."""
    folder = root / "mixed" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"rgb{i}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(folder / "deep16.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root / "mixed"


def write_webdataset_shards(folder, names, per_shard: int = 6, classes: int = 3, formats=("jpg",), seed: int = 0):
    """Webdataset tars ``folder/<name>`` (e.g. ``train-0000.tar``): samples ``NNN.<format>`` (each of
    ``formats``) + ``NNN.cls``."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for name in names:
        with tarfile.open(folder / name, "w") as tar:
            for _ in range(per_shard):
                picture = Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))
                members = [(f"{index:03d}.{fmt}", _encoded(picture, fmt)) for fmt in formats]
                for member, data in members + [(f"{index:03d}.cls", str(index % classes).encode())]:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
    return folder


def _encoded(picture, fmt: str) -> bytes:
    import io

    out = io.BytesIO()
    picture.save(out, format=fmt.replace("jpg", "jpeg"))
    return out.getvalue()
