"""The layer rule, checked on the source with ast: no import cycles between aft_hf modules (lazy,
function-level imports included), no command-line module imported by anything but the entry point,
argument parsing only in the command modules, and no function over 80 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "aft_hf"
ENTRY_POINTS = {"aft_hf.cli", "aft_hf.__main__"}
"""The dispatcher (it loads the ``aft_hf.commands.*`` modules by name) and ``python -m aft_hf``."""
COMMANDS = "aft_hf.commands"
"""The package of command modules: one per subcommand, argument parsing and printing only."""
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """aft_hf modules that ``name`` imports anywhere in its body (``from x import y`` counts y if it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


LAYERS = [
    {"constants", "errors", "env", "files", "tokenizer", "outputs", "published", "load_report", "registry"},
    {"config", "config_help", "recipes", "launch", "model", "resolution", "threat_models", "attack", "data", "perf", "lora",
     "results", "objectives"},
    {"card", "hub", "openclip", "graft"},
    {"figures", "explain", "evaluate", "benchmark"},
    {"train", "train_eval", "hub_sync", "checkpointing", "checkpoint_export", "guards", "resume", "objective_setup"},
    {"world", "demo"},
]
"""The layer diagram of docs/development.md, top (imported by everything) to bottom; the command modules
(``aft_hf.commands``, the ``aft_hf.cli`` dispatcher) come last, below every layer."""


def _layer(name: str) -> int:
    if _is_cli(name):
        return len(LAYERS)
    part = name.split(".")[1]
    found = [i for i, group in enumerate(LAYERS) if part in group]
    assert found, f"{name} is in no layer: add aft_hf.{part} to LAYERS here and to the diagram in docs/development.md"
    return found[0]


def _is_cli(name: str) -> bool:
    return name == COMMANDS or name.startswith(COMMANDS + ".") or name in ENTRY_POINTS


def _find_cycle(graph: dict[str, set[str]]):
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_is_read():
    graph = _graph()
    assert "aft_hf.model" in graph["aft_hf.world.storage"]  # a module-level import
    assert "aft_hf.model" in graph["aft_hf.explain.targets"]  # a lazy, function-level import


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _may_import(name: str, dep: str) -> bool:
    """The dispatcher loads the commands; a command may use the argument helpers of the commands package."""
    return not _is_cli(dep) or name in ENTRY_POINTS or (_is_cli(name) and dep == COMMANDS)


def test_no_module_imports_a_command_line_module():
    """Shared code lives in library modules; a command module is reached only through the dispatcher."""
    bad = [f"{name} imports {dep}" for name, deps in _graph().items() for dep in deps if not _may_import(name, dep)]
    assert not bad, bad
    assert not _may_import("aft_hf.hub", "aft_hf.commands.push")
    assert not _may_import("aft_hf.commands.demo", "aft_hf.commands.train")


def test_modules_import_only_from_their_layer_or_above():
    # the package root is exempt: importing any aft_hf module runs aft_hf/__init__ first anyway
    bad = [f"{name} imports {dep}" for name, deps in _graph().items() if name != "aft_hf"
           for dep in deps if dep != "aft_hf" and _layer(dep) > _layer(name)]
    assert not bad, bad


@pytest.mark.slow
def test_model_and_figures_stay_below_world_and_model_code():
    graph = _graph()
    assert not any(dep.startswith("aft_hf.world") for dep in graph["aft_hf.model"])
    assert "aft_hf.model" not in graph["aft_hf.figures"]


def test_every_command_module_is_registered_and_only_those():
    from aft_hf.cli import COMMAND_MODULES

    on_disk = {name for name in _modules() if name.startswith(COMMANDS + ".")}
    assert set(COMMAND_MODULES) == on_disk
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_argument_parsing_lives_only_in_command_modules():
    """No library module imports argparse or registers a subcommand: the CLI lives in aft_hf.commands."""
    bad = []
    for name, path in _modules().items():
        if _is_cli(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) or \
                    isinstance(node, ast.ImportFrom) and node.module == "argparse":
                bad.append(f"{name} imports argparse")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "add_subcommand":
                bad.append(f"{name} defines add_subcommand")
    assert not bad, bad


def _long_functions(source: str, filename: str) -> list[str]:
    """``name:line (N lines)`` for each function or method longer than the limit, from ``def`` to its last line."""
    return [f"{filename}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source, filename))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_the_function_length_check_counts_from_def_to_the_last_line():
    body = "".join(f"    x = {i}\n" for i in range(MAX_FUNCTION_LINES - 2))
    fits = f'def f():\n    """Doc."""\n{body}'  # def + docstring + body = the limit exactly
    assert _long_functions(fits, "m.py") == []
    too_long = fits + "    return x\n"
    assert _long_functions(too_long, "m.py") == [f"m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    method = "class A:\n" + "".join("    " + line + "\n" for line in too_long.splitlines())
    assert _long_functions(method, "m.py") == [f"m.py:2 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_function_in_the_package_is_over_80_lines():
    long = [hit for path in sorted(ROOT.rglob("*.py"))
            for hit in _long_functions(path.read_text(), str(path.relative_to(ROOT.parent)))]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers): {long}"
