"""The in-process processor: from the local log to the store.

:class:`LocalProcessor` runs one thread that tails a :class:`~collector_server.sinks.local.LocalLog`
and writes what it reads to a :class:`~collector_server.store.Store` in batches.  The log offset
of the last applied entry is saved by the store in the same transaction as the records
(source ``"local"``), so after a crash or a restart the processor resumes exactly after the last
commit; records applied twice are harmless anyway (the store deduplicates by result id).

Entries are decoded into plain rows (``store.rows``), not a Result per result; with a
:class:`~collector_server.store.sqlite.SqliteStore` the Python part of a write is prepared
before its transaction, and while the processor is behind, the next round is read, decoded
and prepared in a second thread while one is written.

The sink wakes the processor after each durable commit, so a result is queryable a few
milliseconds after its 202.  Per-test statistics (the ``tests`` table: runs, outcomes,
recent durations) wait in the store while entries keep coming, and are merged once per
test: by the round that finds them ``STATISTICS_DELAY`` old (5 s, see
``store.sqlite_write``), or ``STATISTICS_IDLE`` after the last entry.
:attr:`LocalProcessor.applied` (``status``, ``lag``, ``wait_caught_up``) counts an entry
once its statistics are merged too.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from collector_server.sinks.local import LocalLog, decode_entry_rows
from collector_server.store import Store
from collector_server.store.rows import RunRows, records_of_rows, rows_of_records
from collector_server.store.sqlite import SqliteStore
from collector_server.store.sqlite_write import PreparedWrite
from pytest_testengine.model import Record

log = logging.getLogger("testengine.collector.processor")

SOURCE: Final = "local"
READ_ENTRIES: Final = 32  # log entries read per round at most
IDLE_WAIT: Final = 1.0  # seconds between checks when nobody wakes us
RETRY_WAIT: Final = 1.0  # seconds before retrying a failed store write
DRAIN_TIME: Final = 10.0  # seconds a stopping processor keeps applying what is left
HANDOFF_RECORDS: Final = 200_000  # records held in memory from the sink; beyond, read the log
STATISTICS_IDLE: Final = 0.05  # seconds without a new entry before waiting ones are merged
#: Garbage collector thresholds of a collector process (see :func:`settle_gc`).
GC_THRESHOLDS: Final = (100_000, 10, 10)


def settle_gc() -> None:
    """Set the garbage collector of a collector process once it has started (``serve``, the
    processor process, ``process`` and its child).

    What start-up built lives as long as the process, so it is frozen out of every
    collection.  Checking and applying results allocates a dict per result and a few objects
    per test, nearly all freed by reference counting; with Python's default thresholds (700
    allocations) a young collection ran every few results and a full one every few thousand,
    and they freed next to nothing: about a seventh of the processor's time, a tenth of
    ingest's.  A young collection every 100,000 allocations keeps what a rare reference
    cycle holds bounded (a few MB at most) for a fraction of that."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One round: the entries after offset ``after`` up to ``last``, ``count`` results,
    prepared for the store (a :class:`PreparedWrite`, or rows for another store)."""

    after: int
    last: int
    count: int
    work: PreparedWrite | list[RunRows]


class LocalProcessor:
    def __init__(
        self,
        log_: LocalLog,
        store: Store,
        *,
        batch_records: int = 5000,
        linger: float = 0.0,
        source: str = SOURCE,
        on_applied: Callable[[int, int], None] | None = None,
    ) -> None:
        self.log = log_
        self.store = store
        self.batch_records = batch_records
        self.linger = linger
        self.source = source
        self.on_applied = on_applied
        self.offset = 0  # the last entry whose results are stored
        self._merged = 0  # the last entry whose test statistics were merged too
        self.error: str | None = None
        self._handoff: collections.deque[tuple[int, Sequence[Record]]] = collections.deque()
        self._handoff_records = 0
        self._handoff_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._drain = True
        # once started: reads the next round from the log while one is written
        self._reader: ThreadPoolExecutor | None = None
        self._ahead: Future[_Batch] | None = None

    def start(self) -> None:
        self.offset = self.store.offsets().get(self.source, 0)
        if self.offset > self.log.last_offset:
            log.warning(
                "[testengine] the store has applied %s up to offset %d but %s ends at %d: "
                "the log was replaced; reading it from the start",
                self.source,
                self.offset,
                self.log.path,
                self.log.last_offset,
            )
            self.offset = 0
        self._merged = self.offset  # the store merges what a crash left waiting when opened
        self.log.mark_consumed(self.offset)
        self._stopping.clear()
        self._drain = True
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="testengine-processor-read")
        self._thread = threading.Thread(target=self._run, name="testengine-processor")
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def on_commit(self, first: int, batches: list[Sequence[Record]]) -> None:
        """Sink callback: these records are durable at offsets first, first + 1, ...; keep
        them to apply without reading the log back (bounded; the log is the fallback).  An
        entry without records (a body, see ``LocalLogSink.publish_body``) is read from the
        log: it is not handed over."""
        count = sum(len(b) for b in batches)
        with self._handoff_lock:
            if self._handoff_records + count <= HANDOFF_RECORDS:
                self._handoff.extend((o, b) for o, b in enumerate(batches, start=first) if b)
                self._handoff_records += count
        self._wake.set()

    def _take_handoff(self) -> tuple[list[Record], int] | None:
        """Records that follow our offset from the handoff, or None to read the log."""
        records: list[Record] = []
        last = self.offset
        with self._handoff_lock:
            queue = self._handoff
            while queue and queue[0][0] <= last:  # applied already (read from the log)
                self._handoff_records -= len(queue.popleft()[1])
            while queue and queue[0][0] == last + 1 and len(records) < self.batch_records:
                last, batch = queue.popleft()
                self._handoff_records -= len(batch)
                records.extend(batch)
        return (records, last) if last > self.offset else None

    def stop(self, timeout: float = 30.0, *, drain: bool = True) -> None:
        """Stop after applying what the log holds (for up to DRAIN_TIME seconds; at once,
        after the transaction in progress, without ``drain``)."""
        self._drain = drain
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def applied(self) -> int:
        """The last entry whose results are stored and whose test statistics are merged."""
        return self._merged if self.store.statistics_waiting else self.offset

    @property
    def lag(self) -> int:
        """Log entries written but not yet applied."""
        return max(0, self.log.last_offset - self.applied)

    def status(self) -> dict[str, object]:
        alive = self._thread is not None and self._thread.is_alive()
        return {"running": alive, "offset": self.applied, "lag": self.lag, "error": self.error}

    def wait_caught_up(self, timeout: float) -> bool:
        """Block until every entry written so far is applied (or ``timeout`` seconds pass)."""
        target = self.log.last_offset
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.applied < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def step(self, *, defer_statistics: bool = False) -> int:
        """Apply what the log holds after our offset (one round); return entries applied.
        Test statistics wait if more is in the log, or with ``defer_statistics``."""
        handed = self._take_handoff()
        if handed is not None:
            records, last = handed
            batch = _Batch(self.offset, last, len(records), self._prepare(rows_of_records(records)))
        else:
            batch = self._next_from_log()
        if batch.last == self.offset:
            return 0
        reader = self._reader
        if reader is not None and handed is None and self.log.last_offset > batch.last:
            # read and prepare the next round while this one is written (SQLite lets go of
            # the GIL while it works, so the two overlap)
            self._ahead = reader.submit(self._read_log, batch.last)
        new = self._write(batch, defer_statistics)
        applied = batch.last - self.offset
        with self._progress:
            self.offset = batch.last
            if not self.store.statistics_waiting:
                self._merged = batch.last
            self._progress.notify_all()
        self.log.mark_consumed(batch.last)
        if self.on_applied is not None:
            self.on_applied(batch.count, new)
        return applied

    def _prepare(self, groups: list[RunRows]) -> PreparedWrite | list[RunRows]:
        store = self.store
        return store.prepare(groups) if isinstance(store, SqliteStore) else groups

    def merge_statistics(self) -> None:
        """Merge the test statistics that wait in the store now."""
        self.store.flush_statistics()
        with self._progress:
            self._merged = self.offset
            self._progress.notify_all()
        if self.on_applied is not None:
            self.on_applied(0, 0)

    def _write(self, batch: _Batch, defer_statistics: bool) -> int:
        offsets = {self.source: batch.last}
        store, work = self.store, batch.work
        if isinstance(work, PreparedWrite) and isinstance(store, SqliteStore):
            defer = defer_statistics or self.log.last_offset > batch.last  # more waits
            return store.write_prepared(work, offsets=offsets, defer_statistics=defer)
        assert isinstance(work, list)
        return store.write(records_of_rows(work), offsets=offsets)

    def _next_from_log(self) -> _Batch:
        """The batch after our offset: the one read ahead if it is that one, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            batch = ahead.result()  # a failure to read raises here, and is retried
            if batch.after == self.offset:
                return batch
        return self._read_log(self.offset)

    def _behind(self) -> bool:
        """More is written than we hold in memory: no point waiting for more (lingering
        would only slow the catch-up)."""
        with self._handoff_lock:
            held = self._handoff[-1][0] if self._handoff else self.offset
        return self.log.last_offset > held

    def _read_log(self, after: int) -> _Batch:
        groups: list[RunRows] = []
        count = 0
        last = after
        for offset, data in self.log.iter_from(after, READ_ENTRIES):
            try:
                rows = decode_entry_rows(data)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("[testengine] skipping unreadable log entry %d: %s", offset, exc)
            else:
                groups.extend(rows)
                count += sum(len(g.rows) for g in rows)
            last = offset
            if count >= self.batch_records:
                break
        return _Batch(after, last, count, self._prepare(groups))

    def _run(self) -> None:
        try:
            self._loop()
            if not self._drain:
                return
            deadline = time.monotonic() + DRAIN_TIME  # stopping: apply what is left, bounded
            try:
                while time.monotonic() < deadline and self.step():
                    pass
                if self.store.statistics_waiting:
                    self.merge_statistics()
            except Exception as exc:
                log.warning("[testengine] stopped with log entries left to apply: %s", exc)
        finally:
            reader, self._reader = self._reader, None
            ahead, self._ahead = self._ahead, None
            if ahead is not None:
                ahead.cancel()
            if reader is not None:
                reader.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self.linger and self._handoff_records < self.batch_records and not self._behind():
                self._stopping.wait(self.linger)  # gather more into one transaction
            try:
                applied = self.step(defer_statistics=True)
                if not applied and self.store.statistics_waiting:
                    if self._wake.wait(STATISTICS_IDLE):
                        continue  # more came: they wait on
                    self.merge_statistics()
                self.error = None
            except Exception as exc:
                self.error = f"cannot apply log entries after offset {self.offset}: {exc}"
                log.error("[testengine] %s; retrying in %.0f s", self.error, RETRY_WAIT)
                self._wake.wait(RETRY_WAIT)
                continue
            if not applied:
                self._wake.wait(IDLE_WAIT)
