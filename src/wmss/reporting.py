"""Helpers shared by the reports: Markdown tables and the HTML templates shipped in ``wmss/templates``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table: the header, the ``|---|`` rule and one line per row.

    Cells are written as given, except that a ``|`` in a cell is escaped as ``\\|`` so that it cannot
    split the cell. The text has no trailing newline.
    """
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} cells for {len(header)} columns: {row}")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("wmss", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **context: Any) -> str:
    """The template ``wmss/templates/<name>`` rendered with ``context``, HTML autoescaping on: text
    values are escaped; pass HTML that is already safe as ``markupsafe.Markup`` (or mark it ``|safe``)."""
    return _environment().get_template(name).render(**context)
