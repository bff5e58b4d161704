"""The test suite's own rules (docs/development.md, "Tests"), checked on the source with ast:

- tests mirror the package: ``tests/<sub>/`` for ``aft_hf/<sub>/`` (with an ``__init__.py``), and every test file is
  named ``test_<module>[_<topic>].py`` after a module of its folder's package (or the package itself); a few
  project-wide checks (lint, docs, README, notebook, layering, this file) sit at the top;
- no test module imports another (shared fixtures live in conftest.py, shared helpers in ``tests/*_helpers.py``);
- every module of aft_hf is imported by a test of the fast subset (``pytest -m "not slow"``).
"""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
PACKAGE = REPO / "aft_hf"
PROJECT_CHECKS = {"architecture", "docs", "docs_commands", "layout", "lint", "notebook", "readme"}
# Besides its own modules, a sub-folder may test: commands/ holds the tests of the `aft-hf` dispatcher (cli.py).
EXTRA_SUBJECTS = {"commands": {"cli"}}


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _modules(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")}


def _imported_modules(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import statement loads (relative imports resolved against ``package``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def _is_test_module(dotted: str) -> bool:
    return dotted.startswith("tests") and any(p.startswith("test_") or p == "conftest" for p in dotted.split("."))


def test_no_test_module_imports_another():
    problems = []
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported_modules(node, package):
                if _is_test_module(name):
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not problems, "move shared fixtures to conftest.py and helpers to tests/*_helpers.py:\n" + "\n".join(
        problems)


def test_tests_mirror_the_package_layout():
    problems = []
    for folder in sorted(p for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if not (PACKAGE / folder.name / "__init__.py").is_file():
            problems.append(f"tests/{folder.name}/ has no package aft_hf/{folder.name}/")
        if not (folder / "__init__.py").is_file():
            problems.append(f"tests/{folder.name}/ has no __init__.py")
    for path in _test_files():
        rel = path.relative_to(TESTS)
        stem = path.stem[len("test_"):]
        if len(rel.parts) == 1:
            subjects = _modules(PACKAGE) | PROJECT_CHECKS
        else:
            sub = rel.parts[0]
            subjects = _modules(PACKAGE / sub) | {sub} | EXTRA_SUBJECTS.get(sub, set())
        if not any(stem == s or stem.startswith(s + "_") for s in subjects):
            problems.append(f"tests/{rel}: not named after a module of its folder's package")
    for sub in sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")):
        for path in TESTS.glob(f"test_{sub}*.py"):
            if path.stem == f"test_{sub}" or path.stem[len(f"test_{sub}"):].startswith("_"):
                problems.append(f"tests/{path.name}: tests of aft_hf/{sub}/ belong in tests/{sub}/")
    assert not problems, "\n".join(problems)


def _is_slow_mark(node: ast.AST) -> bool:
    """``pytest.mark.slow`` (bare or called) or a list/tuple holding it."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_is_slow_mark(e) for e in node.elts)
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "slow" and isinstance(node.value, ast.Attribute) \
        and node.value.attr == "mark"


def _loads(node: ast.AST) -> list[str]:
    """The modules a node loads: an import, or ``main(["NAME", ...])`` of aft_hf.cli, which runs the command
    module aft_hf/commands/NAME.py (the dispatcher loads command modules; nothing else may import them)."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "main" \
            and node.args and isinstance(node.args[0], ast.List) and node.args[0].elts \
            and isinstance(node.args[0].elts[0], ast.Constant) and isinstance(node.args[0].elts[0].value, str):
        return [f"aft_hf.commands.{node.args[0].elts[0].value.replace('-', '_')}"]
    return _imported_modules(node, "")


def _fast_imports(path: Path) -> set[str]:
    """aft_hf modules a file loads where the fast subset runs it: module-level imports count when one test of
    the file is not marked slow; imports (and ``main([...])`` calls) inside a test function count when that test
    is not slow; those inside helpers and fixtures count like module-level ones."""
    tree = ast.parse(path.read_text())
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                      and _is_slow_mark(n.value) for n in tree.body)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    tests = [f for f in functions if f.name.startswith("test_")]
    slow = {f for f in tests if module_slow or any(_is_slow_mark(d) for d in f.decorator_list)}
    names: set[str] = set()
    inside_tests = {id(n) for f in tests for n in ast.walk(f)}
    for f in tests:
        if f not in slow:
            names.update(name for n in ast.walk(f) for name in _loads(n))
    if len(slow) < len(tests):
        names.update(name for n in ast.walk(tree) if id(n) not in inside_tests for name in _loads(n))
    return {n for n in names if n == "aft_hf" or n.startswith("aft_hf.")}


def _defining_modules(dotted: str) -> set[str]:
    """The aft_hf modules an imported name stands for: the module itself, or the module it is read from and the
    one that defines it (``from aft_hf.evaluate import robust_accuracy`` tests aft_hf.evaluate.zeroshot)."""
    parent, _, name = dotted.rpartition(".")
    if not parent or (_is_package(parent) and importlib.util.find_spec(dotted) is not None):
        return {dotted}
    try:
        obj = getattr(importlib.import_module(parent), name)
    except (ImportError, AttributeError):
        return set()
    where = getattr(obj, "__module__", None)
    return {parent} | ({where} if isinstance(where, str) and where.startswith("aft_hf.") else set())


def _is_package(dotted: str) -> bool:
    return importlib.util.find_spec(dotted).submodule_search_locations is not None


@pytest.mark.slow
def test_every_module_is_imported_by_a_fast_test():
    covered: set[str] = set()
    for path in _test_files():
        for dotted in _fast_imports(path):
            covered |= _defining_modules(dotted)
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
               if p.stem not in ("__init__", "__main__")}
    missing = sorted(modules - covered)
    assert not missing, "no test of the fast subset (-m 'not slow') imports: " + ", ".join(missing)


def test_the_checks_see_a_test_module_import_and_a_slow_mark(tmp_path):
    """The rules above catch what they are for (so they cannot pass by reading nothing)."""
    source = ("import pytest\nfrom tests.test_model import x\nfrom aft_hf.attack import PGDAttacker\n\n"
              "@pytest.mark.slow\ndef test_a():\n    from aft_hf.graft import graft\n\n"
              "def test_b():\n    import aft_hf.lora\n    main(['export-openclip', 'x'])\n")
    path = tmp_path / "test_probe.py"
    path.write_text(source)
    tree = ast.parse(source)
    assert [n for node in ast.walk(tree) for n in _imported_modules(node, "tests") if _is_test_module(n)] == \
        ["tests.test_model", "tests.test_model.x"]
    assert _is_test_module("tests.evaluate.test_apgd") and _is_test_module("tests.conftest")
    assert not _is_test_module("tests.image_helpers")
    assert _fast_imports(path) == {"aft_hf.attack", "aft_hf.attack.PGDAttacker", "aft_hf.lora",
                                   "aft_hf.commands.export_openclip"}
    path.write_text("import pytest\nimport aft_hf.lora\n\n@pytest.mark.slow\ndef test_a():\n    pass\n")
    assert _fast_imports(path) == set()
    assert _defining_modules("aft_hf.evaluate.robust_accuracy") >= {"aft_hf.evaluate.zeroshot"}
    assert _defining_modules("aft_hf.lora") == {"aft_hf.lora"}
