"""Every command block of the README and docs/ is run by a test, by CI, or says why it cannot run here.

A ```bash block is preceded by one marker line:
- ``<!-- tested-by: tests/FILE.py::TEST -->``: that test exists and runs the block's commands;
- ``<!-- main-command -->`` / ``<!-- test-command -->``: `.ci/run` runs it on a clean clone;
- ``<!-- not-run: REASON -->``: needs what a test machine has not (a GPU, the Hub) or is long; the reason says which.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- (tested-by: (?P<test>\S+)|main-command|test-command|not-run: (?P<why>[^>]+)) -->")
NOT_RUN_REASONS = ("GPU", "Hub", "network", "long", "install")


def _bash_blocks(path: Path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```bash":
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            yield i + 1, previous


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_block_is_run_or_says_why_not(path):
    problems = []
    for line_no, previous in _bash_blocks(path):
        match = MARKER.fullmatch(previous.strip())
        where = f"{path.relative_to(REPO)}:{line_no}"
        if not match:
            problems.append(f"{where}: no tested-by / not-run marker before the block")
        elif match.group("test"):
            file, _, name = match.group("test").partition("::")
            source = REPO / file
            if not source.is_file() or not re.search(rf"^def {re.escape(name)}\(", source.read_text(), re.M):
                problems.append(f"{where}: {match.group('test')} does not exist")
        elif match.group("why") and not any(r in match.group("why") for r in NOT_RUN_REASONS):
            problems.append(f"{where}: a not-run reason must name what is missing ({', '.join(NOT_RUN_REASONS)})")
    assert not problems, "\n".join(problems)


def test_configuration_reference_is_current():
    from aft_hf.config_help import markdown_reference

    current = (REPO / "docs" / "configuration.md").read_text()
    assert current == markdown_reference(), "docs/configuration.md is stale: run python scripts/config_reference.py"


def test_readme_stays_a_five_minute_read():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines < 250, f"README.md has {lines} lines: move reference material to docs/"


def test_docs_links_resolve():
    problems = []
    for path in DOCS:
        for target in re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", path.read_text()):
            if not (path.parent / target).exists():
                problems.append(f"{path.relative_to(REPO)}: {target}")
    assert not problems, "broken links: " + ", ".join(problems)
