"""Stores: where the processor writes results and per-test statistics.

:meth:`Store.write` is idempotent by result id, so a replayed or redelivered record is
stored once (at-least-once transport, exactly-once data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pytest_testengine.model import Record


class Store(Protocol):
    def write(self, records: Sequence[Record]) -> int:
        """Store records in one transaction; return how many were new (not duplicates)."""

    def close(self) -> None: ...
