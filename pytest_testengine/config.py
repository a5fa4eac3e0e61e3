"""Resolve the settings from their sources (pure).

Precedence, highest first: command line > environment > ini file > CI detection > default.
Command-line values are ``None`` when not given; empty environment or ini values count as not
given.  A value that does not fit its setting raises :class:`ConfigError` whose message names
the setting as the user wrote it, the value, its source and what is expected; the plugin turns
it into a ``pytest.UsageError``.  Secrets (the token) come from the environment or the ini file
only, and are never echoed, neither in messages nor in ``repr(settings)``.

Exceptions::

    ValueError
     └── ConfigError
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from pytest_testengine.ci import NOT_CI, CiInfo
from pytest_testengine.options import OPTIONS, Option

Source = Literal["command line", "env", "ini file", "CI detection", "default"]


class ConfigError(ValueError):
    """A setting has a value that does not fit; ``str(error)`` is the one-line message."""


#: The default of the mapping fields (read-only: the default is shared).
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class Settings(NamedTuple):  # not a dataclass: cheaper to define, in every pytest start
    """The resolved settings; field names are the option names of :data:`OPTIONS`."""

    enabled: bool = False
    url: str = "http://127.0.0.1:8765"
    token: str | None = None  # left out of repr()
    suite: str = "default"
    tags: Mapping[str, str] = _EMPTY
    output: str | None = None
    spool_dir: str | None = None
    batch_size: int = 1000
    batch_age: float = 1.0
    flush_deadline: float = 5.0
    timeout: float = 10.0
    queue_size: int = 20000
    message_limit: int = 4096
    max_tags: int = 50
    max_tag_length: int = 128
    compress: bool = True
    build_id: str | None = None
    job_id: str | None = None
    branch: str | None = None
    commit: str | None = None
    pull_request: str | None = None
    build_url: str | None = None
    split_index: int | None = None
    split_total: int | None = None
    split_by: str = "test"
    split_mode: str = "static"
    split_fallback: str = "local"
    durations: str | None = None
    ci: CiInfo = NOT_CI
    #: Where each setting came from.
    sources: Mapping[str, Source] = _EMPTY
    #: Settings of rows that are not fields of this class (added by other modules).
    extra: Mapping[str, Any] = _EMPTY

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(self._fields, self, strict=True)
            if name != "token"
        )
        return f"Settings({shown})"

    @property
    def active(self) -> bool:
        """Whether the plugin records anything (sending, or writing the output file)."""
        return self.enabled or self.output is not None

    def get(self, name: str) -> Any:
        """A setting by name, whether a field or an extra row."""
        if name in _FIELDS:
            return getattr(self, name)
        return self.extra[name]


_FIELDS: Final = frozenset(Settings._fields)


def _given(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | tuple):
        return bool(value)
    return True


def _candidates(
    opt: Option,
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    ini: Mapping[str, object],
    ci: CiInfo,
) -> list[tuple[object, Source, str]]:
    """Every value given for ``opt``, highest precedence first: (raw, source, label)."""
    found: list[tuple[object, Source, str]] = []
    if opt.flag is not None and not opt.secret and _given(cli.get(opt.name)):
        found.append((cli[opt.name], "command line", opt.flag))
    if opt.env is not None and _given(environ.get(opt.env)):
        found.append((environ[opt.env], "env", opt.env))
    if opt.ini is not None and _given(ini.get(opt.ini)):
        found.append((ini[opt.ini], "ini file", opt.ini))
    if opt.ci is not None and _given(getattr(ci, opt.ci)):
        found.append((getattr(ci, opt.ci), "CI detection", opt.name))
    return found


def _parse(opt: Option, raw: object, source: Source, label: str) -> object:
    try:
        return opt.type.parse(raw)
    except ValueError:
        shown = "<hidden>" if opt.secret else _show(raw)
        raise ConfigError(
            f"[testengine] invalid value {shown} for {label} ({source}): "
            f"expected {opt.type.expected}"
        ) from None


def _show(raw: object) -> str:
    if isinstance(raw, list | tuple):
        return " ".join(repr(str(item)) for item in raw)
    return repr(str(raw))


def resolve(
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    ini: Mapping[str, object],
    ci: CiInfo = NOT_CI,
    *,
    options: Sequence[Option] = OPTIONS,
) -> Settings:
    """Settings from the command line (by option name), the environment (by env name), the ini
    file (by ini key) and the detected CI; raises :class:`ConfigError` on a bad value."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for opt in options:
        found = _candidates(opt, cli, environ, ini, ci)
        if not found:
            values[opt.name] = opt.default
            sources[opt.name] = "default"
        elif opt.merge:
            merged: dict[Any, Any] = dict(opt.default) if isinstance(opt.default, Mapping) else {}
            for raw, source, label in reversed(found):
                parsed = _parse(opt, raw, source, label)
                assert isinstance(parsed, Mapping)
                merged.update(parsed)
            values[opt.name] = merged
            sources[opt.name] = found[0][1]
        else:
            raw, source, label = found[0]
            values[opt.name] = _parse(opt, raw, source, label)
            sources[opt.name] = source
    known = {k: v for k, v in values.items() if k in _FIELDS}
    extra = {k: v for k, v in values.items() if k not in _FIELDS}
    return Settings(**known, ci=ci, sources=sources, extra=extra)
