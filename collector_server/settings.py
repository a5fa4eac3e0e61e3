"""Collector settings: one frozen dataclass, read from the command line and the environment.

Every field of :class:`CollectorSettings` is a setting.  Its metadata (built by :func:`option`)
gives the help text and the parser; the command-line flag and the environment name are derived
from the field name: ``max_body_bytes`` is ``--max-body-bytes`` and
``TESTENGINE_COLLECTOR_MAX_BODY_BYTES``.  Adding a setting is adding one field::

    kafka_bootstrap: str | None = option(None, "Kafka bootstrap servers", parse=str)

Precedence: command line > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from collector_server.errors import SettingsError

ENV_PREFIX: Final = "TESTENGINE_COLLECTOR_"

__all__ = ["CollectorSettings", "SettingsError", "add_arguments", "resolve"]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _number(text: str, kind: type[int] | type[float], expected: str) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(expected) from None


def parse_positive_int(text: str) -> int:
    expected = "expected a positive integer"
    value: int = _number(text, int, expected)
    if value <= 0:
        raise ValueError(expected)
    return value


def parse_port(text: str) -> int:
    expected = "expected a port number from 0 to 65535"
    value: int = _number(text, int, expected)
    if not 0 <= value <= 65535:
        raise ValueError(expected)
    return value


def parse_seconds(text: str) -> float:
    expected = "expected a number of seconds > 0"
    value: float = _number(text, float, expected)
    if not 0 < value < float("inf"):
        raise ValueError(expected)
    return value


def parse_seconds_or_zero(text: str) -> float:
    expected = "expected a number of seconds >= 0"
    value: float = _number(text, float, expected)
    if not 0 <= value < float("inf"):
        raise ValueError(expected)
    return value


def parse_log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in {"critical", "error", "warning", "info", "debug", "trace"}:
        raise ValueError("expected one of critical, error, warning, info, debug, trace")
    return value


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, ``512KiB``, ``64MiB``, ``1GiB`` (also ``K``/``M``/``G``)."""
    expected = "expected a positive number of bytes, e.g. 1048576, 64MiB or 1GiB"
    value = text.strip()
    scale = 1
    for suffixes, factor in (
        (("GIB", "G"), 1 << 30),
        (("MIB", "M"), 1 << 20),
        (("KIB", "K"), 1 << 10),
    ):
        suffix = next((s for s in suffixes if value.upper().endswith(s)), None)
        if suffix:
            value, scale = value[: -len(suffix)].strip(), factor
            break
    number: int = _number(value, int, expected)
    if number <= 0:
        raise ValueError(expected)
    return number * scale


def parse_topic(text: str) -> str:
    value = text.strip()
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not 0 < len(value) <= 249 or value in {".", ".."} or not set(value) <= allowed:
        raise ValueError("expected a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-'")
    return value


def parse_bootstrap(text: str) -> str:
    servers = [s.strip() for s in text.split(",")]
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError("expected host:port, several separated by commas")
    return ",".join(servers)


def parse_group(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("expected a consumer group name without spaces")
    return value


def parse_kafka_options(text: str) -> tuple[tuple[str, str], ...]:
    """librdkafka settings ``key=value``, several separated by commas."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(c.isspace() for c in key.strip()):
            raise ValueError(
                "expected librdkafka settings as key=value (e.g. linger.ms=10), got "
                f"{item.strip()!r}"
            )
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def python_level(level: str) -> str:
    """The ``logging`` level of a ``log_level`` setting (uvicorn's ``trace`` is DEBUG)."""
    return "DEBUG" if level == "trace" else level.upper()


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] = str,
    env: tuple[str, ...] = (),
    repeat: bool = False,
) -> Any:
    """Declare one setting (a dataclass field with its help text and parser).

    ``env`` names more environment variables read after the derived one (the names the product
    promises, such as ``TESTENGINE_KAFKA_BOOTSTRAP``); ``repeat`` makes the flag repeatable (its
    values, parsed one by one, are joined, and so is a comma-separated environment value).
    """
    return field(
        default=default, metadata={"help": help, "parse": parse, "env": env, "repeat": repeat}
    )


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    # server
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8765, "port to listen on (0 picks a free one)", parse=parse_port)
    data_dir: Path = option(  # noqa: RUF009 (a Path is immutable)
        Path("testengine-data"), "directory for the local log, the store and the tokens", parse=Path
    )
    log_level: str = option(
        "info", "log level (debug, info, warning, error)", parse=parse_log_level
    )
    access_log: bool = option(False, "log every request", parse=parse_bool)
    # limits of POST /v1/results
    max_body_bytes: int = option(
        16 * 1024 * 1024, "largest request body, as sent", parse=parse_positive_int
    )
    max_decompressed_bytes: int = option(
        64 * 1024 * 1024, "largest request body after gzip decoding", parse=parse_positive_int
    )
    max_results_per_batch: int = option(
        10_000, "most results in one batch", parse=parse_positive_int
    )
    max_id_length: int = option(128, "longest result id or run id", parse=parse_positive_int)
    max_string_length: int = option(
        4096, "longest node id, file, name, suite or other text field", parse=parse_positive_int
    )
    max_message_length: int = option(
        65_536, "longest failure message or skip reason", parse=parse_positive_int
    )
    max_tags: int = option(64, "most tags on one result or run", parse=parse_positive_int)
    max_tag_key_length: int = option(128, "longest tag name", parse=parse_positive_int)
    max_tag_value_length: int = option(1024, "longest tag value", parse=parse_positive_int)
    # behaviour
    retry_after: float = option(
        1.0, "seconds a client is told to wait when the sink is unavailable", parse=parse_seconds
    )
    processor_linger: float = option(
        0.05,
        "seconds the processor waits to gather more records into one store transaction",
        parse=parse_seconds_or_zero,
    )
    processor_batch: int = option(
        5000,
        "most records the processor writes to the store in one transaction",
        parse=parse_positive_int,
    )
    processor_process: bool = option(
        True,
        "run the processor (embedded, or Kafka's in `serve`) in a child process, so ingest "
        "and processing use two cores (false: a thread of the collector process)",
        parse=parse_bool,
    )
    # test splitting (POST /v1/plans)
    max_plan_tests: int = option(
        200_000, "most test ids in one plan request", parse=parse_positive_int
    )
    lease_seconds: float = option(
        60.0, "shortest lease of a dynamic chunk handed to a shard", parse=parse_seconds
    )
    lease_margin: float = option(
        30.0,
        "seconds added to 3 x a chunk's estimate for its lease (the longer lease wins)",
        parse=parse_seconds_or_zero,
    )
    plan_retention: float = option(
        14 * 86_400.0,
        "seconds a split plan (and its dynamic queue) is kept after it was made",
        parse=parse_seconds,
    )
    # Kafka mode (docs/kafka.md)
    kafka_bootstrap: str | None = option(
        None,
        "Kafka bootstrap servers (host:port,...); set, the collector publishes to Kafka",
        parse=parse_bootstrap,
        env=("TESTENGINE_KAFKA_BOOTSTRAP",),
    )
    kafka_topic: str = option("testengine.results", "Kafka topic of the results", parse=parse_topic)
    kafka_partitions: int = option(
        6, "partitions of the topic when the collector creates it", parse=parse_positive_int
    )
    kafka_option: tuple[tuple[str, str], ...] = option(
        (),
        "librdkafka setting key=value for every Kafka client (repeatable; env: comma-separated)",
        parse=parse_kafka_options,
        repeat=True,
    )
    kafka_group: str = option(
        "testengine-processors", "Kafka consumer group of the processors", parse=parse_group
    )
    wal_max_bytes: int = option(
        1 << 30,
        "size limit of the write-ahead log (503 once full), e.g. 1GiB or 64MiB",
        parse=parse_size,
    )
    processor: bool = option(
        True,
        "with Kafka, `serve` also runs a processor (false: ingest only)",
        parse=parse_bool,
    )

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def replace(self, **changes: Any) -> CollectorSettings:
        return dataclasses.replace(self, **changes)


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def envs_of(name: str) -> tuple[str, ...]:
    """Environment names of a setting, in the order they are read."""
    extra: tuple[str, ...] = CollectorSettings.__dataclass_fields__[name].metadata["env"]
    return (env_of(name), *extra)


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add one flag per setting (or per setting in ``names``); defaults are None so "not given"
    stays visible."""
    for f in dataclasses.fields(CollectorSettings):
        if names is not None and f.name not in names:
            continue
        parser.add_argument(
            flag_of(f.name),
            dest=f.name,
            default=None,
            action="append" if f.metadata["repeat"] else "store",
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {' or '.join(envs_of(f.name))}, default {f.default})",
        )


def resolve(
    cli: Mapping[str, str | list[str] | None], environ: Mapping[str, str]
) -> CollectorSettings:
    """Settings from command-line values (None = not given; a list for a repeatable flag) and
    an environment mapping."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(CollectorSettings):
        given = cli.get(f.name)
        source = f"{flag_of(f.name)} (command line)"
        if given is None:
            for name in envs_of(f.name):
                given = environ.get(name)
                source = f"{name} (env)"
                if given is not None:
                    break
        if given is None:
            continue
        parse = f.metadata["parse"]
        items = given if isinstance(given, list) else [given]
        parsed = []
        for item in items:
            try:
                parsed.append(parse(item))
            except ValueError as exc:
                raise SettingsError(
                    f"[testengine] invalid value {item!r} for {source}: {exc}"
                ) from exc
        values[f.name] = (
            tuple(p for part in parsed for p in part) if f.metadata["repeat"] else parsed[0]
        )
    return CollectorSettings(**values)


#: The settings of a Kafka processor (``process``, and serve's processor child): no HTTP
#: side, no sink.
PROCESS_SETTINGS: Final = (
    "data_dir",
    "log_level",
    "kafka_bootstrap",
    "kafka_topic",
    "kafka_partitions",
    "kafka_option",
    "kafka_group",
    "processor_batch",
    "processor_linger",
)


def markdown_table() -> str:
    """The settings as a Markdown table (docs/collector-api.md holds a copy; a test compares)."""
    lines = ["| Flag | Environment | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(CollectorSettings):
        envs = " or ".join(f"`{name}`" for name in envs_of(f.name))
        default = "(none)" if f.default in (None, ()) else f"`{f.default}`"
        lines.append(f"| `{flag_of(f.name)}` | {envs} | {default} | {f.metadata['help']} |")
    return "\n".join(lines)
