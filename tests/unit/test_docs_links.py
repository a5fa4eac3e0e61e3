"""Every docs page and anchor that a message of the product names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pytest_testengine", "collector_server")


def named_links() -> set[tuple[str, str]]:
    """(page, anchor) pairs written in the packages' source, constants resolved."""
    named: set[tuple[str, str]] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            source = source.replace("{TROUBLESHOOTING}", "docs/troubleshooting.md")
            named.update(re.findall(r"(docs/[a-z-]+\.md)#([a-z0-9-]+)", source))
    return named


def anchors_of(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    slugs = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    }
    return slugs | set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_every_docs_anchor_named_in_a_message_exists() -> None:
    named = named_links()
    assert {anchor for _, anchor in named} >= {
        "split-settings",
        "no-split-plan",
        "dynamic-mode",
        "results-were-dropped",
    }
    missing = [
        f"{page}#{anchor}"
        for page, anchor in sorted(named)
        if not (ROOT / page).exists() or anchor not in anchors_of(ROOT / page)
    ]
    assert missing == []
