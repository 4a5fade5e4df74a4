"""The configuration reference (docs/configuration.md), written from ``wmss.config`` itself: each section's
class docstring, and each key's type, default and docstring (the string literal under its field), so
the page cannot drift from the code. ``wmss config --reference`` prints it; a test fails when the
committed page is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from typing import Any

from wmss.config import RunConfig

HEADER = (
    "# Configuration reference\n\n"
    "Every key of a `wmss run` config, with its default. Written from `src/wmss/config.py` by\n"
    "`wmss config --reference > docs/configuration.md`; `tests/test_config_reference.py` fails when this\n"
    "page and the code disagree. A key is set in a YAML file (sections as mappings) or on the command\n"
    "line as `section.key=value` (values parsed as YAML).\n"
)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` (the string literal that follows it)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def _table(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        default = _default(f)
        shown = "null" if default is None else f"`{default}`" if default != {} else "`{}`"
        cells = [
            f"`{prefix}{f.name}`",
            _cell(_type(hints[f.name])),
            _cell(shown),
            _cell(docs.get(f.name, "")),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def reference() -> str:
    """The whole page, as Markdown."""
    lines = [HEADER, "## Top level", "", _cell(inspect.cleandoc(RunConfig.__doc__ or "")), ""]
    lines += _table(RunConfig, "")
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        section = hints[f.name]
        if not dataclasses.is_dataclass(section):
            continue
        lines += ["", f"## `{f.name}`", "", inspect.cleandoc(section.__doc__ or ""), ""]
        lines += _table(section, f"{f.name}.")
    return "\n".join(lines) + "\n"
