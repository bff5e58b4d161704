"""docs/method.md: every reference to it from code, configs and docs points to a section that exists."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "method.md"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.slow
def test_every_reference_to_the_method_doc_resolves():
    anchors = _anchors(DOC.read_text())
    files = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".sh", ".ipynb"}
             and ".git" not in p.parts]
    refs, bad = 0, []
    for path in files:
        text = path.read_text(errors="ignore")
        if path != Path(__file__).resolve():
            assert "METHOD" + ".md" not in text, f"{path} points to a METHOD.md, which is not in the repository"
        for anchor in re.findall(r"method\.md#([\w\-]+)", text):
            refs += 1
            if anchor not in anchors:
                bad.append(f"{path.relative_to(REPO)}: #{anchor}")
    assert refs >= 10 and not bad, bad
