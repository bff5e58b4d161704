"""Cost per image of the robust-accuracy attacks on a random-weight ViT-B/32 (geometry of docs/method.md#model-geometries).

    OMP_NUM_THREADS=1 python benchmarks/apgd_cost.py

One thread, 1000 random zero-shot classes (ImageNet-sized head). A tiny eps keeps every image robust, so
every attack runs all its iterations (the worst case: a robust image). APGD is timed with fewer
iterations and targets and extrapolated linearly in gradient evaluations: APGD-CE + APGD-T with
100 iterations and 9 targets makes (1 + 9) * (100 + 1) = 1010 forward+backward passes per robust image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from aft_hf.evaluate import ZeroShotClassifier, robust_accuracy
from aft_hf.model import ImageEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arguments import at_least, positive_int, show_defaults  # noqa: E402


def main(n: int = 2, iterations: int = 5, targets: int = 1, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           patch_size=32, image_size=224, projection_dim=512, hidden_act="quick_gelu")
    clf = ZeroShotClassifier(ImageEncoder(CLIPVisionModelWithProjection(cfg)).eval(), torch.randn(1000, 512)).eval()
    x = torch.rand(n, 3, 224, 224)
    with torch.no_grad():
        y = clf(x).argmax(1)
    tiny = (1e-4,)  # in 1/255: nothing flips, every run takes all its iterations
    start = time.perf_counter()
    robust_accuracy(clf, x, y, tiny, attack="pgd", steps=10, progress=False)
    pgd = (time.perf_counter() - start) / n
    start = time.perf_counter()
    robust_accuracy(clf, x, y, tiny, attack="apgd", steps=iterations, targets=targets, progress=False)
    measured = (time.perf_counter() - start) / n
    per_pass = measured / ((1 + targets) * (iterations + 1))
    print(f"PGD-10 (10 passes): {pgd:.2f} s/image, {pgd / 10:.3f} s per forward+backward")
    print(f"APGD measured with {iterations} iterations, {targets} target(s): {measured:.2f} s/image, "
          f"{per_pass:.3f} s per forward+backward")
    print(f"APGD-CE+APGD-T default (1010 passes, robust image): ~{1010 * per_pass:.0f} s/image "
          f"(~{1010 * per_pass / pgd:.0f}x PGD-10); an image broken by APGD-CE costs at most ~{101 * per_pass:.0f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=positive_int, default=2, help="images timed")
    p.add_argument("--iterations", type=positive_int, default=5, help="APGD iterations timed (then extrapolated)")
    p.add_argument("--targets", type=at_least(0), default=1, help="APGD-T target classes timed (then extrapolated)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    a = show_defaults(p).parse_args()
    main(a.images, a.iterations, a.targets, a.threads)
