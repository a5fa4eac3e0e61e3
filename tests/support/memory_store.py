"""An in-memory Store for tests: dedupes by result id and counts every write."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping, Sequence

from pytest_testengine.model import Record


class StoreDown(Exception):
    """Raised by :meth:`MemoryStore.write` while ``fail_writes`` is above zero."""


class MemoryStore:
    """``results`` holds one record per result id; ``times`` counts how often each id came."""

    def __init__(self) -> None:
        self.results: dict[str, Record] = {}
        self.times: collections.Counter[str] = collections.Counter()
        self.calls = 0
        self.fail_writes = 0  # the next N writes raise StoreDown
        self.pause = 0.0  # seconds each write takes, like a busy database
        self.saved_offsets: dict[str, int] = {}
        self.closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def write(self, records: Sequence[Record], *, offsets: Mapping[str, int] | None = None) -> int:
        if self.pause:
            time.sleep(self.pause)  # a slow database, not a wait for a condition
        with self._lock:
            self.calls += 1
            if self.fail_writes > 0:
                self.fail_writes -= 1
                raise StoreDown("the test store refuses this write")
            new = 0
            for record in records:
                self.times[record.result.id] += 1
                if record.result.id not in self.results:
                    self.results[record.result.id] = record
                    new += 1
            self.saved_offsets.update(offsets or {})
            self._changed.notify_all()
            return new

    def offsets(self) -> dict[str, int]:
        with self._lock:
            return dict(self.saved_offsets)

    def close(self) -> None:
        self.closed = True

    @property
    def ids(self) -> set[str]:
        with self._lock:
            return set(self.results)

    @property
    def duplicates(self) -> int:
        """Writes of an id beyond its first."""
        with self._lock:
            return sum(self.times.values()) - len(self.times)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` distinct results are stored (or the timeout passes)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.results) >= count, timeout)
