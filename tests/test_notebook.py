"""The walkthrough notebook: stored with its outputs, and it still runs offline, end to end."""

import ast
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def _outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_stored_notebook_has_its_outputs_and_a_names_only_real_section():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the saliency grid, as run
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("zero-shot top-1" in t and "| 0 |" in t for t in tables)  # eval while training, from step 0
    # "Real checkpoints" assigns only names the setup cell defines: changing names is all it takes
    setup = next(c.source for c in nb.cells if c.cell_type == "code" and "BASE =" in c.source)
    defined = {t.id for node in ast.walk(ast.parse(setup)) if isinstance(node, ast.Assign)
               for tgt in node.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}
    real = next(c.source for c in nb.cells if c.cell_type == "markdown" and "Real checkpoints" in c.source)
    block = re.search(r"```python\n(.*?)```", real, re.S).group(1)
    assigned = {t.id for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Assign)
                for tgt in node.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}
    assert assigned and assigned <= defined, assigned - defined
    assert "builtin:world-clip" in setup and "train(cfg)" in "".join(c.source for c in nb.cells)


@pytest.mark.slow
def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("AFT_HF_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny tensors: thread-sync overhead dominates on a shared CPU
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run from scratch: the stored outputs must not hide a failure
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    work = tmp_path / "work"
    for name in ("explanations.png", "run/final/model.safetensors", "run/train_summary.json",
                 "report/AFT/report.json", "report/original/report.json"):
        assert (work / name).is_file(), name
