"""docs/configuration.md is written from config.py (``wmss config --reference``); it must not drift."""

import re
from pathlib import Path

from wmss.config import all_keys
from wmss.config_reference import reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    assert PAGE.read_text() == reference(), (
        "docs/configuration.md is stale: run `wmss config --reference > docs/configuration.md`."
    )


def test_every_key_has_a_row_with_a_meaning():
    cells = [re.split(r"(?<!\\)\|", line) for line in PAGE.read_text().splitlines() if line.startswith("| `")]
    rows = {c[1].strip(" `"): c[4].strip() for c in cells}
    assert set(rows) == set(all_keys())
    assert [key for key, meaning in rows.items() if not meaning] == []
