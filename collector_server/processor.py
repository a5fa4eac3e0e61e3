"""The in-process processor: from the local log to the store.

:class:`LocalProcessor` runs one thread that tails a :class:`~collector_server.sinks.local.LocalLog`
and writes what it reads to a :class:`~collector_server.store.Store` in batches.  The log offset
of the last applied entry is saved by the store in the same transaction as the records
(source ``"local"``), so after a crash or a restart the processor resumes exactly after the last
commit; records applied twice are harmless anyway (the store deduplicates by result id).

The sink wakes the processor after each durable commit, so a result is queryable a few
milliseconds after its 202.  :func:`apply` is the same write for records from any other source.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from collector_server.sinks.local import LocalLog, decode_entry
from collector_server.store import Store
from pytest_testengine.model import Record

log = logging.getLogger("testengine.collector.processor")

SOURCE: Final = "local"
READ_ENTRIES: Final = 32  # log entries read per round at most
IDLE_WAIT: Final = 1.0  # seconds between checks when nobody wakes us
RETRY_WAIT: Final = 1.0  # seconds before retrying a failed store write
DRAIN_TIME: Final = 10.0  # seconds a stopping processor keeps applying what is left
HANDOFF_RECORDS: Final = 200_000  # records held in memory from the sink; beyond, read the log


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
        self.offset = 0
        self.error: str | None = None
        self._handoff: collections.deque[tuple[int, Sequence[Record]]] = collections.deque()
        self._handoff_records = 0
        self._handoff_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._drain = True

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
        self.log.mark_consumed(self.offset)
        self._stopping.clear()
        self._drain = True
        self._thread = threading.Thread(target=self._run, name="testengine-processor")
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def on_commit(self, first: int, batches: list[Sequence[Record]]) -> None:
        """Sink callback: these records are durable at offsets first, first + 1, ...; keep
        them to apply without reading the log back (bounded; the log is the fallback)."""
        count = sum(len(b) for b in batches)
        with self._handoff_lock:
            if self._handoff_records + count <= HANDOFF_RECORDS:
                self._handoff.extend(enumerate(batches, start=first))
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
    def lag(self) -> int:
        """Log entries written but not yet applied."""
        return max(0, self.log.last_offset - self.offset)

    def status(self) -> dict[str, object]:
        alive = self._thread is not None and self._thread.is_alive()
        return {"running": alive, "offset": self.offset, "lag": self.lag, "error": self.error}

    def wait_caught_up(self, timeout: float) -> bool:
        """Block until every entry written so far is applied (or ``timeout`` seconds pass)."""
        target = self.log.last_offset
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.offset < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def step(self) -> int:
        """Apply what the log holds after our offset (one round); return entries applied."""
        handed = self._take_handoff()
        if handed is not None:
            records, last = handed
        else:
            records, last = self._read_log()
        if last == self.offset:
            return 0
        new = self.store.write(records, offsets={self.source: last})
        applied = last - self.offset
        with self._progress:
            self.offset = last
            self._progress.notify_all()
        self.log.mark_consumed(last)
        if self.on_applied is not None:
            self.on_applied(len(records), new)
        return applied

    def _behind(self) -> bool:
        """More is written than we hold in memory: no point waiting for more (lingering
        would only slow the catch-up)."""
        with self._handoff_lock:
            held = self._handoff[-1][0] if self._handoff else self.offset
        return self.log.last_offset > held

    def _read_log(self) -> tuple[list[Record], int]:
        records: list[Record] = []
        last = self.offset
        for offset, data in self.log.iter_from(self.offset, READ_ENTRIES):
            try:
                records.extend(decode_entry(data))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("[testengine] skipping unreadable log entry %d: %s", offset, exc)
            last = offset
            if len(records) >= self.batch_records:
                break
        return records, last

    def _run(self) -> None:
        self._loop()
        if not self._drain:
            return
        deadline = time.monotonic() + DRAIN_TIME  # stopping: apply what is left, bounded
        try:
            while time.monotonic() < deadline and self.step():
                pass
        except Exception as exc:
            log.warning("[testengine] stopped with log entries left to apply: %s", exc)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self.linger and self._handoff_records < self.batch_records and not self._behind():
                self._stopping.wait(self.linger)  # gather more into one transaction
            try:
                applied = self.step()
                self.error = None
            except Exception as exc:
                self.error = f"cannot apply log entries after offset {self.offset}: {exc}"
                log.error("[testengine] %s; retrying in %.0f s", self.error, RETRY_WAIT)
                self._wake.wait(RETRY_WAIT)
                continue
            if not applied:
                self._wake.wait(IDLE_WAIT)
