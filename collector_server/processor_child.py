"""The embedded processor in a child process, so ingest and processing use separate cores.

:class:`ChildProcessor` (in the collector) starts ``python -m collector_server.processor_child``
and stands in for a :class:`~collector_server.processor.LocalProcessor`: same ``start``,
``stop``, ``on_commit``, ``lag``, ``status`` and ``wait_caught_up``.  The child runs a
``LocalProcessor`` that reads the local log (``log.db``) and writes the SQLite store
(``store.db``); both files are shared through SQLite's own locking, WAL mode.

Pipes, one line per message:

- collector -> child (stdin): ``W <offset>`` after each durable commit of the log (the child
  wakes at once instead of at its next poll), ``S`` to stop (the child applies what is left,
  for up to ``DRAIN_TIME``, then exits).  End of file means the collector is gone (crashed or
  killed): the child finishes the transaction it is in and exits; the next collector resumes
  from the offset in the store.
- child -> collector (stdout): JSON objects ``{"offset": n, "records": r, "new": k,
  "error": ...}`` after every store commit and once a second; the collector uses them for
  ``/readyz``, ``/metrics`` and to let the log drop applied entries.

A child that dies (killed, out of memory) is started again after ``child.RESTART_WAIT``
seconds (see :class:`~collector_server.child.Supervised`); it resumes from the offset committed
in the store.

Durability is the in-process processor's: a batch is answered 202 once the log is fsynced; the
child commits the offset of the last applied entry in the same store transaction as the
records; entries are deleted from the log only after the child reported them applied.  Wake
messages are best effort (dropped when the pipe is full: the child polls the log anyway).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import orjson

from collector_server.child import ChildSide, Supervised
from collector_server.processor import LocalProcessor, settle_gc
from collector_server.sinks.local import LocalLog
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Record

log = logging.getLogger("testengine.collector.processor")

START_TIMEOUT: Final = 60.0  # seconds for the child to report its starting offset
STOP_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 1.0  # seconds between status lines when nothing is applied


class ChildProcessor(ChildSide):
    """The collector's side of the child process (see the module docstring)."""

    def __init__(
        self,
        log_: LocalLog,
        store_path: Path,
        *,
        batch_records: int = 5000,
        linger: float = 0.0,
        on_applied: Callable[[int, int], None] | None = None,
    ) -> None:
        self.log = log_
        self.store_path = store_path
        self.batch_records = batch_records
        self.linger = linger
        self.on_applied = on_applied
        self.offset = 0
        self._started = threading.Event()
        self._progress = threading.Condition()
        self._child = Supervised(
            "processor process", self.command, self._update, on_eof=self._ended
        )

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "collector_server.processor_child",
            str(self.log.path),
            str(self.store_path),
            str(self.batch_records),
            repr(self.linger),
        ]

    def start(self) -> None:
        self._child.start()
        if not self._started.wait(START_TIMEOUT):
            self._child.error = f"the processor process did not start in {START_TIMEOUT:g} s"
            log.error("[testengine] %s", self._child.error)

    def _update(self, message: dict[str, Any]) -> None:
        offset = int(message.get("offset", 0))
        self._child.error = message.get("error")
        with self._progress:
            self.offset = max(self.offset, offset) if self._started.is_set() else offset
            self._progress.notify_all()
        self.log.mark_consumed(self.offset)
        self._started.set()
        records = int(message.get("records", 0))
        if records and self.on_applied is not None:
            self.on_applied(records, int(message.get("new", 0)))

    def _ended(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def on_commit(self, first: int, batches: list[Sequence[Record]]) -> None:
        """Sink callback after a durable commit: wake the child (best effort)."""
        self._child.send(b"W %d\n" % (first + len(batches) - 1))

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the child to apply what is left and exit; kill it after ``timeout``."""
        self._child.stop(timeout)

    @property
    def running(self) -> bool:
        return self._child.alive and self._started.is_set()

    @property
    def lag(self) -> int:
        return max(0, self.log.last_offset - self.offset)

    def status(self) -> dict[str, object]:
        return {
            "running": self.running,
            "offset": self.offset,
            "lag": self.lag,
            "error": self.error,
            "pid": self._child.pid,
            "restarts": self.restarts,
        }

    def wait_caught_up(self, timeout: float) -> bool:
        target = self.log.last_offset
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.offset < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._progress.wait(min(remaining, 0.5))
        return True


# -- the child ---------------------------------------------------------------------------


class _Reporter:
    """Status lines on stdout (one JSON object a line), from any thread."""

    def __init__(self, processor: LocalProcessor, out: IO[bytes]) -> None:
        self.processor = processor
        self.out = out
        self.lock = threading.Lock()

    def send(self, records: int = 0, new: int = 0) -> None:
        line = orjson.dumps(
            {
                "offset": self.processor.applied,
                "records": records,
                "new": new,
                "error": self.processor.error,
            }
        )
        with self.lock:
            self.out.write(line + b"\n")
            self.out.flush()


def run_child(log_path: Path, store_path: Path, batch_records: int, linger: float) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the collector stops the child
    # (through stdin, draining) once it has stopped taking batches
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_ = LocalLog(log_path)
    log_.open()
    store = SqliteStore(store_path).open()
    processor = LocalProcessor(log_, store, batch_records=batch_records, linger=linger)
    reporter = _Reporter(processor, sys.stdout.buffer)
    processor.on_applied = reporter.send
    settle_gc()
    processor.start()
    reporter.send()  # the starting offset: the collector is waiting for it
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT):
            with contextlib.suppress(OSError, ValueError):
                reporter.send()

    threading.Thread(target=heartbeat, name="testengine-processor-heartbeat", daemon=True).start()
    drain = False
    for line in sys.stdin.buffer:
        if line.startswith(b"W "):
            with contextlib.suppress(ValueError):
                log_.last_offset = max(log_.last_offset, int(line[2:]))
            processor.wake()
        elif line.startswith(b"S"):
            drain = True
            break
    processor.stop(STOP_TIMEOUT, drain=drain)
    done.set()
    with contextlib.suppress(OSError, ValueError):
        reporter.send()
    store.close()
    log_.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return run_child(Path(args[0]), Path(args[1]), int(args[2]), float(args[3]))


if __name__ == "__main__":
    sys.exit(main())
