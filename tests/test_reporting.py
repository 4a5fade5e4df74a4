"""Shared report helpers: Markdown tables and the HTML template shipped with the package."""

from importlib import resources

import pytest
from markupsafe import Markup

from wmss.reporting import markdown_table, render_template


def test_markdown_table_exact_text():
    text = markdown_table(["model", "accuracy"], [["base", "50.0"], ["tuned", "62.5"]])
    assert text == "| model | accuracy |\n|---|---|\n| base | 50.0 |\n| tuned | 62.5 |"


def test_markdown_table_escapes_a_pipe_in_a_cell():
    text = markdown_table(["a|b", "c"], [["x | y", "z"]])
    assert text == "| a\\|b | c |\n|---|---|\n| x \\| y | z |"


def test_markdown_table_without_rows_and_with_a_short_row():
    assert markdown_table(["a"], []) == "| a |\n|---|"
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["only one"]])


def test_the_report_template_is_package_data():
    assert (resources.files("wmss") / "templates" / "report.html.j2").is_file()


def test_the_report_template_escapes_text_but_not_the_sections():
    page = render_template(
        "report.html.j2",
        run_name="<run & co>",
        nav=[("overview", "a <b>")],
        sections=[Markup('<section id="overview"><h2>Overview</h2></section>')],
    )
    assert page.startswith("<!DOCTYPE html>\n") and page.endswith("</html>\n")
    assert "<title>wmss run: &lt;run &amp; co&gt;</title>" in page
    assert '<a href="#overview">a &lt;b&gt;</a>' in page
    assert '<section id="overview"><h2>Overview</h2></section>' in page
    assert "<style>" in page and "table.kv thead { display: none; }" in page
