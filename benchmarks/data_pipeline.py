"""Throughput of the package's image pipeline: decode + RGB + bicubic resize + centre crop + tensor.

    python benchmarks/data_pipeline.py --n-images 256 --workers 0,1,2 --json data.json

Writes an imagefolder of ImageNet-sized JPEGs made locally (about 500x375, quality 90, smooth
content so that the files are about as large as real photos; 1% of the files corrupt, so the
bad-file handling is on the measured path), then measures

* images/s of one process calling the same function the data loader uses (one core);
* images/s of ``aft_hf.data.build_dataloader`` (the trainer's own loader, map-style and streamed)
  with 0, 1, 2, ... worker processes;
* from the per-core rate, the workers needed to feed a GPU target (default 550 images/s, the
  ViT-B/16 step at 55% of an H200's bf16 peak), assuming near-linear scaling over cores, which
  the measured 1 -> N worker rates on this machine test as far as its cores allow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arguments import output_file, positive_int, show_defaults  # noqa: E402


def write_jpegs(folder: Path, n: int, bad_fraction: float = 0.01, seed: int = 0) -> dict:
    """n photo-like JPEGs (about 500x375, quality 90) in one class folder; some of them corrupt."""
    rng = np.random.default_rng(seed)
    (folder / "a").mkdir(parents=True, exist_ok=True)
    n_bad = max(1, round(n * bad_fraction)) if bad_fraction > 0 else 0
    sizes = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        detail = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(np.asarray(image, dtype=np.float64) + detail, 0, 255).astype(np.uint8)
        path = folder / "a" / f"{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        if i < n_bad:  # truncated file: decoding fails half way, as a broken download would
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        sizes.append(path.stat().st_size)
    return {"n_images": n, "n_corrupt": n_bad, "mean_kib": float(np.mean(sizes)) / 1024}


def per_core_rate(folder: Path, size: int) -> dict:
    """Images/s of the loader's per-image function in this process (one core, one torch thread)."""
    from aft_hf.data.images import preprocess

    files = sorted((folder / "a").glob("*.jpg"))
    ok = bad = 0
    t0 = time.perf_counter()
    for path in files:
        try:
            preprocess(str(path), size)
            ok += 1
        except Exception:  # noqa: BLE001 - a corrupt file is part of the measured work
            bad += 1
    seconds = time.perf_counter() - t0
    return {"images_per_s": len(files) / seconds, "decoded": ok, "failed": bad, "seconds": seconds}


def loader_rate(folder: Path, size: int, batch_size: int, workers: int, streaming: bool, batches: int) -> dict:
    """Images/s delivered by the trainer's DataLoader (first batch excluded: worker start-up)."""
    from aft_hf.config import DataConfig
    from aft_hf.data import build_dataloader

    cfg = DataConfig(dataset=str(folder), streaming=streaming, num_workers=workers, shuffle_buffer=64)
    loader = build_dataloader(cfg, size, batch_size, seed=0)
    it = iter(loader)
    next(it)
    t0, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - t0
    del it, loader
    return {"workers": workers, "streaming": streaming, "images": images,
            "images_per_s": images / seconds if seconds > 0 else float("nan")}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=positive_int, default=256)
    p.add_argument("--size", type=positive_int, default=224, help="model input size")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    p.add_argument("--batches", type=positive_int, default=6, help="timed batches per loader setting")
    p.add_argument("--target", type=float, default=550.0, help="images/s the GPU step needs")
    p.add_argument("--cores", type=positive_int, default=16, help="cores of the GPU machine the estimate is for")
    p.add_argument("--folder", type=Path, default=None, help="reuse/keep the JPEG folder here")
    p.add_argument("--json", type=output_file, default=None)
    return show_defaults(p).parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    tmp = None
    folder = args.folder
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name) / "jpegs"
    files = write_jpegs(folder, args.n_images) if not (folder / "a").is_dir() else \
        {"n_images": len(list((folder / "a").glob("*.jpg"))), "reused": True}
    core = per_core_rate(folder, args.size)
    loaders = [loader_rate(folder, args.size, args.batch_size, int(w), streaming, args.batches)
               for streaming in (False, True) for w in args.workers.split(",")]
    needed = math.ceil(args.target / core["images_per_s"])
    report = {"files": files, "size": args.size, "per_core": core, "loaders": loaders, "target_images_per_s":
              args.target, "workers_needed_for_target": needed, "cores": args.cores, "cpu_count": os.cpu_count()}
    print(f"files: {files}")
    print(f"one core: {core['images_per_s']:.1f} images/s (decode + resize + crop, {core['failed']} corrupt skipped)")
    print("| loader | workers | images/s |\n|---|---|---|")
    for r in loaders:
        print(f"| {'streamed' if r['streaming'] else 'map-style'} | {r['workers']} | {r['images_per_s']:.1f} |")
    verdict = "fits" if needed <= args.cores - 1 else "does NOT fit"
    print(f"workers needed for {args.target:.0f} images/s at the measured per-core rate: {needed} "
          f"({verdict} a {args.cores}-core machine with one core left for the training process)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
