"""The import rules of DESIGN.md, kept by a test.

- ``pytest_testengine`` never imports ``collector_server``;
- ``collector_server`` imports only the pure shared modules of ``pytest_testengine``;
- pure modules import neither pytest nor httpx.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_FOR_COLLECTOR = {
    "pytest_testengine",
    "pytest_testengine.__version__",
    "pytest_testengine.model",
    "pytest_testengine.splitting",
    "pytest_testengine.estimates",
}
PURE_MODULES = ["model", "splitting", "estimates", "ci", "config"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("pytest_testengine"), ids=lambda p: p.name)
def test_plugin_never_imports_collector(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] == "collector_server"}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", sources("collector_server"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_collector_imports_only_pure_shared_modules(path: Path) -> None:
    used = {m for m in imported_modules(path) if m.split(".")[0] == "pytest_testengine"}
    bad = {m for m in used if ".".join(m.split(".")[:2]) not in ALLOWED_FOR_COLLECTOR}
    assert not bad, f"{path} imports {sorted(bad)} (allowed: {sorted(ALLOWED_FOR_COLLECTOR)})"


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_modules_import_neither_pytest_nor_httpx(name: str) -> None:
    path = ROOT / "pytest_testengine" / f"{name}.py"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    bad = {m for m in imported_modules(path) if m.split(".")[0] in {"pytest", "_pytest", "httpx"}}
    assert not bad, f"{name}.py must stay pure but imports {sorted(bad)}"


def test_rules_detect_a_violation(tmp_path: Path) -> None:
    """The checker itself sees forbidden imports (so the tests above can fail)."""
    module = tmp_path / "bad.py"
    module.write_text("import httpx\nfrom collector_server.app import create_app\n")
    assert {"httpx", "collector_server.app", "collector_server.app.create_app"} <= imported_modules(
        module
    )
