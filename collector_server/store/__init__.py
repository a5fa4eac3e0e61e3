"""Stores: where the processor writes results and per-test statistics.

:meth:`Store.write` is idempotent by result id, so a replayed or redelivered record is
stored once (at-least-once transport, exactly-once data).  A consumer that tracks its position
in the store passes ``offsets`` (source name -> last applied offset) to :meth:`Store.write`; they
are saved in the same transaction as the records, and :meth:`Store.offsets` reads them back, so
a restart resumes exactly where the last commit ended.

Reads are scoped to one tenant and paged: each returns a :class:`Page` whose ``next_cursor``
(an opaque string, or None on the last page) is passed back as ``cursor``.  A cursor that
cannot be decoded raises :class:`InvalidCursor`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from pytest_testengine.model import Record


class InvalidCursor(ValueError):
    """A cursor that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(kind: str, value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, value])).decode("ascii").rstrip("=")


def decode_cursor(kind: str, cursor: str) -> Any:
    """The value of a cursor of ``kind``; raises InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_kind, value = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(f"cursor {cursor[:40]!r} is not valid") from exc
    if got_kind != kind:
        raise InvalidCursor(f"cursor {cursor[:40]!r} belongs to another list")
    return value


@dataclass(frozen=True, slots=True)
class BuildRun:
    """A run (pytest session) of a CI build, with the shard and plan it reported."""

    run_id: str
    shard_index: int | None
    shard_total: int | None
    plan_id: str | None


@dataclass(frozen=True, slots=True)
class BuildResults:
    """What a build's runs reported: the runs, and per node id how many runs reported it."""

    runs: list[BuildRun]
    counts: dict[str, int]


class Store(Protocol):
    def write(self, records: Sequence[Record], *, offsets: Mapping[str, int] | None = None) -> int:
        """Store records (and offsets) in one transaction; return how many were new."""

    def offsets(self) -> dict[str, int]:
        """The offsets saved by :meth:`write`, by source."""

    def suites(self, tenant: str, *, limit: int, cursor: str | None = None) -> Page:
        """Suites of a tenant, by name."""

    def tests(self, tenant: str, suite: str, *, limit: int, cursor: str | None = None) -> Page:
        """Per-test statistics of a suite, by node id."""

    def runs(self, tenant: str, suite: str, *, limit: int, cursor: str | None = None) -> Page:
        """Runs of a suite with counts by outcome, most recent first."""

    def results(
        self,
        tenant: str,
        suite: str,
        *,
        run_id: str | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page:
        """Raw results of a suite (or of one run), in the order they were stored."""

    def durations(self, tenant: str, suite: str) -> dict[str, float]:
        """The median of each test's recent passing durations (tests that never passed are
        left out)."""

    def build(self, tenant: str, suite: str, build_id: str) -> BuildResults:
        """The runs of a CI build and how many of them reported each node id."""

    @property
    def statistics_waiting(self) -> bool:
        """Whether test statistics of stored results are not merged yet (a busy writer
        lets them wait, see ``sqlite_write.PendingTests``)."""

    def flush_statistics(self) -> None:
        """Merge the test statistics that wait, now."""

    def close(self) -> None: ...
