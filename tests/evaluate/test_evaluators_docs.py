"""The docs describe ROAR's CNN evaluator as CNNOptions builds it (docs/evaluation.md, docs/roar.md)."""

import re
from pathlib import Path

from aft_hf.evaluate.evaluators import CNNOptions, conv_net

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_describe_the_cnn_that_the_code_builds():
    o = CNNOptions()
    weights = sum(p.numel() for p in conv_net(16, 64, o).parameters())
    widths = "/".join(map(str, o.widths))
    evaluation = " ".join((DOCS / "evaluation.md").read_text().split())  # line breaks as spaces
    roar = " ".join((DOCS / "roar.md").read_text().split())
    for text in (evaluation, roar):
        assert f"{o.stem}x{o.stem} patchify stem" in text and f"widths {widths}" in text and "AdamW" in text
        assert f"{o.epochs} epochs" in text and "one-cycle" in text
    assert f"{weights:,} weights at 64 px and 16 classes" in evaluation
    assert f"about {round(weights / 1000)}k weights at 64 px" in roar
    assert not re.search(r"5k weights|strided 3x3 convs|epochs of Adam\b", evaluation)  # the old network
