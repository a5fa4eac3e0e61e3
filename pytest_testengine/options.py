"""Every setting of the plugin, declared once.

:data:`OPTIONS` is the single table. From it come the pytest command-line options
(:func:`add_options`), the ini keys, the environment lookup done by
:func:`pytest_testengine.config.resolve`, and the configuration reference
(:func:`markdown_table`; ``python -m pytest_testengine.options`` prints it).

To add a setting, append an :class:`Option` row (other modules may build on the table with
``OPTIONS + (...)``); a row whose name is not a field of ``Settings`` lands in
``Settings.extra``.  This module is pure: it does not import pytest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, Protocol

Action = Literal["store", "store_true", "append"]

#: Values meaning yes / no in env and ini (case-insensitive).
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})

TABLE_START: Final = "<!-- options-table:start -->"
TABLE_END: Final = "<!-- options-table:end -->"


# Rows are NamedTuples, immutable like frozen dataclasses and much cheaper to define: this
# module is imported by every pytest run that has the plugin installed.


class ValueType(NamedTuple):
    """How a raw value (a string, or what argparse produced) becomes a setting value.

    ``parse`` raises :class:`ValueError` when the value does not fit; the caller builds the
    message from ``expected``.
    """

    name: str  # shown in the docs table
    expected: str  # completes "expected ..." in error messages
    parse: Callable[[object], object]
    metavar: str = "VALUE"


class Option(NamedTuple):
    """One setting and every way to give it."""

    name: str
    help: str
    type: ValueType
    default: object = None
    flag: str | None = None  # command line; None for secrets
    env: str | None = None
    ini: str | None = None
    ci: str | None = None  # attribute of ci.CiInfo that fills it when nothing else does
    secret: bool = False  # never on the command line, never echoed
    action: Action = "store"
    merge: bool = False  # mappings: every source contributes keys, higher sources win per key

    @property
    def dest(self) -> str:
        """The argparse destination of the command-line flag."""
        return f"testengine_{self.name}"


# -- value types ---------------------------------------------------------------------------


def _text(raw: object) -> str:
    if isinstance(raw, bool | int | float):
        return str(raw)
    if not isinstance(raw, str):
        raise ValueError(raw)
    return raw.strip()


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    word = _text(raw).lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(raw)


def _parse_positive_int(raw: object) -> int:
    text = _text(raw)
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(raw)
    return int(text)


def _parse_seconds(raw: object) -> float:
    try:
        value = float(_text(raw))
    except ValueError:
        raise ValueError(raw) from None
    if not 0 <= value < 86400:  # also rejects nan and inf
        raise ValueError(raw)
    return value


def _parse_positive_seconds(raw: object) -> float:
    value = _parse_seconds(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _parse_index(raw: object) -> int:
    text = _text(raw)
    if not text.isdigit():
        raise ValueError(raw)
    return int(text)


def choice(*words: str) -> ValueType:
    """A value out of a closed set of words (case-insensitive)."""

    def parse(raw: object) -> str:
        word = _text(raw).lower()
        if word not in words:
            raise ValueError(raw)
        return word

    return ValueType("|".join(words), "one of " + ", ".join(words), parse, "|".join(words))


def _parse_url(raw: object) -> str:
    text = _text(raw).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError(raw)
    return text


_SUITE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _parse_suite(raw: object) -> str:
    text = _text(raw)
    if not _SUITE_RE.fullmatch(text):
        raise ValueError(raw)
    return text


def _parse_text(raw: object) -> str:
    text = _text(raw)
    if not text or any(c in text for c in "\r\n\t\0"):
        raise ValueError(raw)
    return text


def _parse_path(raw: object) -> str:
    text = _text(raw)
    if not text or "\0" in text:
        raise ValueError(raw)
    return text


def parse_tags(raw: object) -> dict[str, str]:
    """``"k=v,k2=v2"``, or a list of such strings (``--testengine-tag`` given twice)."""
    items: Iterable[object] = raw if isinstance(raw, list | tuple) else [raw]
    tags: dict[str, str] = {}
    for item in items:
        for pair in _text(item).replace("\n", ",").split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ValueError(raw)
            tags[key] = value
    return tags


BOOL: Final = ValueType("boolean", "one of 1, true, yes, on, 0, false, no, off", _parse_bool)
POSITIVE_INT: Final = ValueType("integer", "a positive integer", _parse_positive_int, "N")
SECONDS: Final = ValueType(
    "seconds", "a number of seconds, 0 or more (less than a day)", _parse_seconds, "SECONDS"
)
POSITIVE_SECONDS: Final = ValueType(
    "seconds", "a number of seconds above 0 (less than a day)", _parse_positive_seconds, "SECONDS"
)
INDEX: Final = ValueType("integer", "an integer, 0 or more", _parse_index, "I")
URL: Final = ValueType(
    "URL", "an http:// or https:// URL such as http://127.0.0.1:8765", _parse_url, "URL"
)
SUITE: Final = ValueType(
    "name",
    "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
    _parse_suite,
    "NAME",
)
TEXT: Final = ValueType("text", "one line of text, not empty", _parse_text, "TEXT")
PATH: Final = ValueType("path", "a file or directory path", _parse_path, "PATH")
TAGS: Final = ValueType(
    "tags",
    "key=value pairs separated by commas, such as team=api,area=billing",
    parse_tags,
    "KEY=VALUE",
)


# -- the table -----------------------------------------------------------------------------


def _row(name: str, help: str, type: ValueType, default: object = None, **kw: Any) -> Option:
    """A row with the conventional names: ``--testengine-NAME``, ``TESTENGINE_NAME``, ini
    ``testengine_NAME``; pass ``flag=None`` (etc.) to leave one out."""
    dashed = name.replace("_", "-")
    names: dict[str, Any] = {
        "flag": f"--testengine-{dashed}",
        "env": f"TESTENGINE_{name.upper()}",
        "ini": f"testengine_{name}",
    }
    names.update(kw)
    return Option(name=name, help=help, type=type, default=default, **names)


OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        name="enabled",
        help="Record results and send them to the collector.",
        type=BOOL,
        default=False,
        flag="--testengine",
        env="TESTENGINE_ENABLED",
        ini="testengine",
        action="store_true",
    ),
    _row("url", "Base URL of the collector.", URL, "http://127.0.0.1:8765"),
    _row(
        "token",
        "Bearer token of the collector's tenant (secret: environment or ini only, never printed).",
        TEXT,
        flag=None,
        secret=True,
    ),
    _row("suite", "Name of the test suite the results belong to.", SUITE, "default"),
    _row(
        "tags",
        "Tags of the whole run, key=value pairs; merged across sources, the higher one wins "
        "per key. The flag may be repeated.",
        TAGS,
        {},
        flag="--testengine-tag",
        action="append",
        merge=True,
    ),
    _row(
        "output",
        "Also write the results to this file as JSON lines (works without a collector).",
        PATH,
    ),
    _row(
        "spool_dir",
        "Directory for results that could not be delivered (default: .testengine/spool "
        "under the rootdir).",
        PATH,
        flag="--testengine-spool",
    ),
    _row("batch_size", "Results per request to the collector.", POSITIVE_INT, 1000),
    _row(
        "batch_age",
        "Longest time a result waits before a partial batch is sent.",
        POSITIVE_SECONDS,
        1.0,
    ),
    _row(
        "flush_deadline",
        "Longest time the end of the run waits for delivery; the rest goes to the spool.",
        SECONDS,
        5.0,
    ),
    _row("timeout", "Timeout of one request to the collector.", POSITIVE_SECONDS, 10.0),
    _row(
        "queue_size",
        "Results held in memory waiting for the sender; beyond it they go to the spool.",
        POSITIVE_INT,
        20000,
    ),
    _row(
        "message_limit",
        "Longest failure message or skip reason kept, in characters.",
        POSITIVE_INT,
        4096,
    ),
    _row("max_tags", "Most tags kept per test and per run.", POSITIVE_INT, 50),
    _row("max_tag_length", "Longest tag key or value kept, in characters.", POSITIVE_INT, 128),
    _row("compress", "Compress requests with gzip.", BOOL, True, flag=None),
    _row("build_id", "Build id (default: detected from the CI).", TEXT, ci="build_id", ini=None),
    _row("job_id", "Job id (default: detected from the CI).", TEXT, ci="job_id", ini=None),
    _row("branch", "Branch (default: detected from the CI).", TEXT, ci="branch", ini=None),
    _row("commit", "Commit SHA (default: detected from the CI).", TEXT, ci="commit", ini=None),
    _row(
        "pull_request",
        "Pull request number (default: detected from the CI).",
        TEXT,
        ci="pull_request",
        ini=None,
        flag=None,
    ),
    _row(
        "build_url",
        "Link to the CI build (default: detected from the CI).",
        TEXT,
        ci="build_url",
        ini=None,
        flag=None,
    ),
    Option(
        name="split_index",
        help="This job's shard, 0-based; with --split-total it runs only its share of the tests "
        "(default: detected from Buildkite, CircleCI or GitLab parallel jobs).",
        type=INDEX,
        flag="--split-index",
        env="TESTENGINE_SPLIT_INDEX",
        ini="testengine_split_index",
        ci="shard_index",
    ),
    Option(
        name="split_total",
        help="How many shards (parallel jobs) share the tests (default: detected from the CI).",
        type=POSITIVE_INT,
        flag="--split-total",
        env="TESTENGINE_SPLIT_TOTAL",
        ini="testengine_split_total",
        ci="shard_total",
    ),
    _row(
        "split_by",
        "Unit of the split: single tests, or whole files (module fixtures set up once).",
        choice("test", "file"),
        "test",
        flag="--split-by",
    ),
    _row(
        "split_mode",
        "static: each shard gets a fixed share after collection; dynamic: shards take chunks "
        "of work from the collector until none is left.",
        choice("static", "dynamic"),
        "static",
        flag="--split-mode",
    ),
    _row(
        "split_fallback",
        "When the collector cannot plan the split: local (every shard computes the same plan "
        "alone), all (run every test), fail (stop with an error).",
        choice("local", "all", "fail"),
        "local",
    ),
    _row(
        "durations",
        "Durations file for the local fallback plan: JSON {node id: seconds}, the format of "
        "pytest-split's .test_durations.",
        PATH,
    ),
)


# -- pytest registration -------------------------------------------------------------------


class OptionGroup(Protocol):
    def addoption(self, *opts: str, **attrs: Any) -> None: ...


class IniParser(Protocol):
    def addini(self, name: str, help: str, type: Any = ..., default: Any = ...) -> None: ...


def add_options(group: OptionGroup, parser: IniParser, options: Sequence[Option] = OPTIONS) -> None:
    """Register every flag (default ``None``: "not given" stays visible) and ini key."""
    for opt in options:
        if opt.flag is not None:
            attrs: dict[str, Any] = {"dest": opt.dest, "default": None, "help": _cli_help(opt)}
            if opt.action == "store_true":
                attrs["action"] = "store_true"
            else:
                attrs["action"] = opt.action
                attrs["metavar"] = opt.type.metavar
            group.addoption(opt.flag, **attrs)
        if opt.ini is not None:
            parser.addini(opt.ini, _ini_help(opt), default=None)


def _default_text(opt: Option) -> str:
    if opt.default is None or opt.default == {}:
        return ""
    if isinstance(opt.default, bool):
        return "true" if opt.default else "false"
    return str(opt.default)


def _cli_help(opt: Option) -> str:
    text = opt.help
    if opt.env:
        text += f" Env {opt.env}."
    default = _default_text(opt)
    return f"{text} Default: {default}." if default else text


def _ini_help(opt: Option) -> str:
    return f"[testengine] {opt.help}"


# -- documentation -------------------------------------------------------------------------


def markdown_table(options: Sequence[Option] = OPTIONS) -> str:
    """The configuration reference, one row per setting (used in README and docs)."""
    lines = [
        "| Command line | Environment | ini key | Type | Default | Description |",
        "|---|---|---|---|---|---|",
    ]

    def code(value: str | None) -> str:
        return f"`{value}`" if value else "-"

    for opt in options:
        flag = opt.flag
        if flag and opt.action != "store_true":
            flag = f"{flag} {opt.type.metavar}"
        default = _default_text(opt)
        cells = [
            code(flag),
            code(opt.env),
            code(opt.ini),
            opt.type.name,
            code(default) if default else "-",
            opt.help,
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between the table markers replaced by ``table``."""
    start = text.index(TABLE_START) + len(TABLE_START)
    end = text.index(TABLE_END, start)
    return f"{text[:start]}\n{table}{text[end:]}"


def table_in(text: str) -> str:
    """The table currently between the markers of ``text``."""
    start = text.index(TABLE_START) + len(TABLE_START)
    end = text.index(TABLE_END, start)
    return text[start:end].strip("\n") + "\n"


def options_by_name(options: Iterable[Option] = OPTIONS) -> Mapping[str, Option]:
    return {opt.name: opt for opt in options}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_testengine.options [--write FILE ...]``: print the table, or
    rewrite it between the markers of each FILE."""
    import sys
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    table = markdown_table()
    if args[:1] == ["--write"]:
        for name in args[1:]:
            path = Path(name)
            path.write_text(replace_table(path.read_text(encoding="utf-8"), table), "utf-8")
            print(f"updated the configuration table in {path}")
        return 0
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
