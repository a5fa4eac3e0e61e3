"""The settings table: names, parsers, pytest registration, and the generated docs table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_testengine import options
from pytest_testengine.config import Settings
from pytest_testengine.options import OPTIONS, TABLE_END, TABLE_START

ROOT = Path(__file__).resolve().parents[2]


def test_names_are_unique_and_follow_the_conventions() -> None:
    for attr in ("name", "flag", "env", "ini"):
        values = [getattr(opt, attr) for opt in OPTIONS if getattr(opt, attr)]
        assert len(values) == len(set(values)), attr
    for opt in OPTIONS:
        assert opt.env is None or opt.env.startswith("TESTENGINE_")
        assert opt.ini is None or opt.ini.startswith("testengine")
        assert opt.flag is None or opt.flag.startswith(("--testengine", "--split-"))
        assert opt.help.endswith("."), opt.name


def test_secrets_have_no_command_line_flag() -> None:
    secrets = [opt for opt in OPTIONS if opt.secret]
    assert [opt.name for opt in secrets] == ["token"]
    assert all(opt.flag is None for opt in secrets)


def test_every_row_of_this_package_is_a_settings_field_with_the_same_default() -> None:
    defaults = Settings._field_defaults
    for opt in OPTIONS:
        assert opt.name in defaults, opt.name
        assert defaults[opt.name] == opt.default, opt.name


def test_the_senders_policy_has_the_defaults_of_the_rows_it_shares() -> None:
    # `testengine upload` and direct users of the sender build Policy() without settings
    from pytest_testengine.sender import Policy

    shared = {opt.name: opt.default for opt in OPTIONS if opt.name in Policy._fields}
    assert {"batch_size", "batch_age", "queue_size", "flush_deadline"} <= set(shared)
    for name, default in shared.items():
        assert Policy._field_defaults[name] == default, name


def test_every_default_parses_as_its_own_type() -> None:
    for opt in OPTIONS:
        if opt.default not in (None, {}):
            assert opt.type.parse(str(opt.default)) == opt.default, opt.name


@pytest.mark.parametrize(
    ("value_type", "raw", "expected"),
    [
        pytest.param(options.BOOL, "1", True, id="bool-1"),
        pytest.param(options.BOOL, " Yes ", True, id="bool-yes-spaces"),
        pytest.param(options.BOOL, "off", False, id="bool-off"),
        pytest.param(options.BOOL, True, True, id="bool-from-flag"),
        pytest.param(options.POSITIVE_INT, "250", 250, id="int"),
        pytest.param(options.POSITIVE_INT, 7, 7, id="int-from-toml"),
        pytest.param(options.SECONDS, "0", 0.0, id="seconds-zero"),
        pytest.param(options.SECONDS, "2.5", 2.5, id="seconds-fraction"),
        pytest.param(options.POSITIVE_SECONDS, "0.1", 0.1, id="positive-seconds"),
        pytest.param(options.URL, "http://h:1/", "http://h:1", id="url-trailing-slash"),
        pytest.param(options.URL, "https://ci.example/te", "https://ci.example/te", id="url-path"),
        pytest.param(options.SUITE, "api.v2_x-1", "api.v2_x-1", id="suite"),
        pytest.param(options.TAGS, "a=1, b = two", {"a": "1", "b": "two"}, id="tags-string"),
        pytest.param(
            options.TAGS, ["a=1", "b=2,c=3"], {"a": "1", "b": "2", "c": "3"}, id="tags-list"
        ),
        pytest.param(options.TAGS, "a=1\nb=2", {"a": "1", "b": "2"}, id="tags-lines"),
        pytest.param(options.TAGS, "a=x=y", {"a": "x=y"}, id="tags-equals-in-value"),
    ],
)
def test_parsers_accept(value_type: options.ValueType, raw: object, expected: object) -> None:
    assert value_type.parse(raw) == expected


@pytest.mark.parametrize(
    ("value_type", "raw"),
    [
        pytest.param(options.BOOL, "maybe", id="bool-word"),
        pytest.param(options.POSITIVE_INT, "0", id="int-zero"),
        pytest.param(options.POSITIVE_INT, "-3", id="int-negative"),
        pytest.param(options.POSITIVE_INT, "1.5", id="int-fraction"),
        pytest.param(options.POSITIVE_INT, "abc", id="int-word"),
        pytest.param(options.SECONDS, "-1", id="seconds-negative"),
        pytest.param(options.SECONDS, "nan", id="seconds-nan"),
        pytest.param(options.SECONDS, "inf", id="seconds-inf"),
        pytest.param(options.SECONDS, "soon", id="seconds-word"),
        pytest.param(options.POSITIVE_SECONDS, "0", id="positive-seconds-zero"),
        pytest.param(options.URL, "127.0.0.1:8765", id="url-no-scheme"),
        pytest.param(options.URL, "ftp://h", id="url-scheme"),
        pytest.param(options.URL, "http://h/x?y=1", id="url-query"),
        pytest.param(options.SUITE, "a/b", id="suite-slash"),
        pytest.param(options.SUITE, "-a", id="suite-dash-first"),
        pytest.param(options.SUITE, "x" * 129, id="suite-too-long"),
        pytest.param(options.TEXT, "a\nb", id="text-newline"),
        pytest.param(options.TAGS, "novalue", id="tags-no-equals"),
        pytest.param(options.TAGS, "=v", id="tags-no-key"),
        pytest.param(options.TAGS, "k=", id="tags-no-value"),
    ],
)
def test_parsers_reject(value_type: options.ValueType, raw: object) -> None:
    with pytest.raises(ValueError):
        value_type.parse(raw)


class _Recorder:
    def __init__(self) -> None:
        self.flags: dict[str, dict[str, Any]] = {}
        self.ini: dict[str, dict[str, Any]] = {}

    def addoption(self, *opts: str, **attrs: Any) -> None:
        (flag,) = opts
        self.flags[flag] = attrs

    def addini(self, name: str, help: str, type: Any = None, default: Any = None) -> None:
        self.ini[name] = {"help": help, "default": default}


def test_add_options_registers_every_flag_with_a_none_default_and_every_ini_key() -> None:
    rec = _Recorder()
    options.add_options(rec, rec)
    assert set(rec.flags) == {opt.flag for opt in OPTIONS if opt.flag}
    assert set(rec.ini) == {opt.ini for opt in OPTIONS if opt.ini}
    assert all(attrs["default"] is None for attrs in rec.flags.values())
    assert all(spec["default"] is None for spec in rec.ini.values())
    assert rec.flags["--testengine"]["action"] == "store_true"
    assert rec.flags["--testengine-tag"]["action"] == "append"
    assert rec.flags["--testengine-batch-size"]["dest"] == "testengine_batch_size"
    assert "TESTENGINE_BATCH_SIZE" in rec.flags["--testengine-batch-size"]["help"]
    assert "Default: 1000." in rec.flags["--testengine-batch-size"]["help"]


def test_markdown_table_has_one_row_per_setting() -> None:
    table = options.markdown_table()
    rows = table.strip().splitlines()
    assert len(rows) == len(OPTIONS) + 2
    assert rows[0].startswith("| Command line | Environment | ini key |")
    token_row = next(r for r in rows if "`TESTENGINE_TOKEN`" in r)
    assert token_row.startswith("| - |")  # no command-line flag for the secret
    assert "| `--testengine-tag KEY=VALUE` | `TESTENGINE_TAGS` | `testengine_tags` |" in table
    assert "| `--testengine` | `TESTENGINE_ENABLED` | `testengine` | boolean | `false` |" in table


def test_replace_table_rewrites_only_between_the_markers() -> None:
    text = f"intro\n{TABLE_START}\nold\n{TABLE_END}\noutro\n"
    new = options.replace_table(text, "| t |\n")
    assert new == f"intro\n{TABLE_START}\n| t |\n{TABLE_END}\noutro\n"
    assert options.table_in(new) == "| t |\n"


def _files_with_markers() -> list[Path]:
    candidates = [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")]
    return sorted(p for p in candidates if TABLE_START in p.read_text(encoding="utf-8"))


def test_docs_configuration_page_has_the_table_markers() -> None:
    assert ROOT / "docs" / "configuration.md" in _files_with_markers()


@pytest.mark.parametrize("path", _files_with_markers(), ids=lambda p: str(p.relative_to(ROOT)))
def test_configuration_tables_match_the_settings_table(path: Path) -> None:
    written = options.table_in(path.read_text(encoding="utf-8"))
    assert written == options.markdown_table(), (
        f"the configuration table in {path.relative_to(ROOT)} is out of date; regenerate it with "
        f"python -m pytest_testengine.options --write {path.relative_to(ROOT)}"
    )


def test_main_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert options.main([]) == 0
    assert capsys.readouterr().out == options.markdown_table()


def test_main_writes_the_table_between_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# x\n{TABLE_START}\nstale\n{TABLE_END}\n", encoding="utf-8")
    assert options.main(["--write", str(page)]) == 0
    assert options.table_in(page.read_text(encoding="utf-8")) == options.markdown_table()
    assert capsys.readouterr().out == f"updated the configuration table in {page}\n"
