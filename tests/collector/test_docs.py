"""docs/collector-api.md stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from collector_server.settings import markdown_table

DOC = Path(__file__).parents[2] / "docs" / "collector-api.md"


def test_settings_table_matches_the_settings() -> None:
    text = DOC.read_text()
    found = re.search(r"<!-- settings-table:[^>]*-->\n(.*?)\n<!-- /settings-table -->", text, re.S)
    assert found, "settings table markers missing in docs/collector-api.md"
    assert found.group(1) == markdown_table(), (
        "docs/collector-api.md is out of date: paste the output of `python -c "
        "'from collector_server.settings import markdown_table as t; print(t())'`"
    )


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text()
    sources = (Path(__file__).parents[2] / "collector_server").rglob("*.py")
    codes = set()
    for source in sources:
        codes.update(re.findall(r'\b\d{3},\s*"([a-z_]+)"', source.read_text()))
        codes.update(re.findall(r'_fail\(\s*"([a-z_]+)"', source.read_text()))
    assert "invalid_value" in codes
    assert {"unsupported_media_type", "body_too_large", "no_tokens"} <= codes
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert missing == []
