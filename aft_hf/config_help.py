"""``aft-hf train --help``: every config field with its default and meaning, generated from the code.

A field's documentation is ``metadata={"help": ...}`` when given, else the string literal written
under the field in :mod:`aft_hf.config` (read from the source with :mod:`ast`, so the dataclasses
stay plain and the text is written once).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap

from .config import ALIASES, TrainConfig, _field_types


@functools.lru_cache(maxsize=None)
def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal that follows its annotated assignment in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (frozen app): help without descriptions
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_help(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, object, str]]:
    """``(dotted name, default, meaning)`` for every leaf of the config tree, in declaration order."""
    rows = []
    types_ = _field_types(cls)
    docs = _attribute_docs(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if dataclasses.is_dataclass(types_[f.name]):
            rows.extend(field_help(types_[f.name], path + "."))
        else:
            rows.append((path, _default(f), f.metadata.get("help") or docs.get(f.name, "")))
    return rows


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace(" ", "")


def format_fields(width: int = 100) -> str:
    """The field list of ``--help``: one entry per field, its meaning indented below it."""
    lines = []
    for path, default, meaning in field_help():
        lines.append(f"  --{path} (default: {_yaml_scalar(default)})")
        if meaning:
            lines.extend(textwrap.wrap(meaning, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def format_aliases() -> str:
    names = ", ".join(f"--{a} = --{p}" for a, p in ALIASES.items())
    return textwrap.fill(names, 100, initial_indent="  ", subsequent_indent="  ")


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_reference() -> str:
    """docs/configuration.md: every field of the config tree as a table per section, from the code."""
    out = ["# Configuration reference", "",
           "Generated from the config dataclasses (`aft_hf/config.py`) by `python scripts/config_reference.py`;",
           "a test fails when this file is not current. Give a field in YAML (`section: {field: value}`) or on",
           "the command line (`--section.field value`); `aft-hf train --help` prints the same list."]
    section = None
    for path, default, meaning in field_help():
        head = path.split(".")[0] if "." in path else "top level"
        if head != section:
            section = head
            out += ["", f"## {section}", "", "| field | default | meaning |", "|---|---|---|"]
        out.append(f"| `{path}` | `{_yaml_scalar(default)}` | {_markdown_cell(meaning)} |")
    out += ["", "## Aliases", "", "The argument names of the Hugging Face `run_*_no_trainer.py` examples:", ""]
    out += [f"- `--{alias}` = `--{target}`" for alias, target in ALIASES.items()]
    return "\n".join(out) + "\n"
