"""The embedded sink: a durable append-only log in SQLite (``log.db`` in the data directory).

The log is one table of entries ``(offset, data)``; one entry holds the records of one
publish, encoded as ``{"v": 1, "groups": [{"tenant": ..., "run": {...}, "results": [...]}]}``
(records of one batch share their tenant and run, so the run is written once), or, for a batch
that passed ``ingest.check_batch`` unchanged, as ``{"v": 2, "tenant": ..., "run": {...},
"batch": <the request body as sent>}`` (no re-encoding on the ingest path), or, when that
body came gzipped, as a header line ``{"v": 4, "tenant": ..., "run": {...}}``, a line with the
rows the store indexes and counts (``store.rows.Row``, a JSON array of arrays, taken from the
results ingest has just checked) and the gzip bytes as sent (a fifth of the bytes of the plain
body to write and fsync; the processor reads the rows without decompressing and parsing the
results, and the store keeps the header and the gzip bytes, as a version 3 entry without the
rows, as the batch's results).  The database
runs in WAL mode with ``synchronous=FULL``: a commit returns once the WAL is fsynced.

One writer thread owns the writes.  Publishes queue their entry and wait; the writer takes
every entry waiting, inserts them, commits once (group commit) and then wakes the publishers,
so ``publish`` returns only once its records are on disk.  Subscribers (the in-process
processor) are called after each commit.  Entries up to the offset the processor reports
through :meth:`LocalLog.mark_consumed` are deleted by the writer as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from collector_server.sinks import SinkUnavailable
from collector_server.store.rows import (
    GZIP_ENTRY_PREFIX,
    ROWS_ENTRY_PREFIX,
    Row,
    RunRows,
    is_gzip_entry,
    rows_of_checked,
    rows_of_records,
    split_gzip_entry,
)
from pytest_testengine.model import (
    OUTCOMES,
    RESULT_FIELDS,
    Record,
    Result,
    RunInfo,
    result_from_dict,
    run_from_dict,
    run_to_dict,
)

log = logging.getLogger("testengine.collector.sink")

ENTRY_VERSION: Final = 1
BODY_ENTRY_VERSION: Final = 2
GZIP_ENTRY_VERSION: Final = 3  # starts with store.rows.GZIP_ENTRY_PREFIX
ROWS_ENTRY_VERSION: Final = 4  # starts with store.rows.ROWS_ENTRY_PREFIX
_ROW_WIDTH: Final = 7  # fields of a store.rows.Row
LOG_FILE: Final = "log.db"
TRUNCATE_EVERY: Final = 256  # entries consumed before the writer deletes them
MAX_GROUP: Final = 512  # entries committed together at most
_RESULT_WIDTH: Final = len(RESULT_FIELDS)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS log (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
"""


def _default(obj: object) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode_entry(records: Sequence[Record]) -> bytes:
    groups: list[dict[str, Any]] = []
    results: list[Any] = []
    tenant: str | None = None
    run: object = None
    for record in records:
        if record.run is not run or record.tenant != tenant:
            tenant, run = record.tenant, record.run
            results = []
            groups.append({"tenant": tenant, "run": run, "results": results})
        results.append(record.result)
    return orjson.dumps({"v": ENTRY_VERSION, "groups": groups}, default=_default)


def encode_body_entry(
    tenant: str,
    run: RunInfo,
    body: bytes,
    gzipped: bytes | None = None,
    results: Sequence[dict[str, Any]] | None = None,
) -> bytes:
    """An entry that keeps a checked batch body as it is: ``{"v": 2, "tenant": ..., "run":
    {...validated run...}, "batch": <the body>}`` (the body's own run is not used); with
    ``gzipped`` (the body as it came, gzipped), the header line and those bytes, and with
    ``results`` too (the body's results, as ``ingest.check_batch`` parsed them), their rows
    on a line between the two (version 4)."""
    if gzipped is not None:
        header = b'{"v":%d,"tenant":%s,"run":%s}\n' % (
            GZIP_ENTRY_VERSION if results is None else ROWS_ENTRY_VERSION,
            orjson.dumps(tenant),
            orjson.dumps(run_to_dict(run), default=_default),
        )
        if results is None:
            return header + gzipped
        return b"%s%s\n%s" % (header, orjson.dumps(rows_of_checked(results)), gzipped)
    return b'{"v":%d,"tenant":%s,"run":%s,"batch":%s}' % (
        BODY_ENTRY_VERSION,
        orjson.dumps(tenant),
        orjson.dumps(run_to_dict(run), default=_default),
        body,
    )


def _entry_object(data: bytes) -> Any:
    """A log entry as one JSON object (a gzip entry as ``{"v": 3, ..., "batch": <body>}``)."""
    if is_gzip_entry(data):
        header, body = split_gzip_entry(data)
        return {**header, "batch": body}
    return orjson.loads(data)


def decode_entry(data: bytes) -> list[Record]:
    """Records of one log entry; raises ValueError/KeyError/TypeError if it is malformed."""
    obj = _entry_object(data)
    version = obj.get("v")
    if version in (BODY_ENTRY_VERSION, GZIP_ENTRY_VERSION, ROWS_ENTRY_VERSION):
        groups = [{"tenant": obj["tenant"], "run": obj["run"], "results": obj["batch"]["results"]}]
    elif version == ENTRY_VERSION:
        groups = obj["groups"]
    else:
        raise ValueError(f"unknown log entry version {version!r}")
    records: list[Record] = []
    for group in groups:
        tenant = str(group["tenant"])
        run = run_from_dict(group["run"])
        append = records.append
        for r in group["results"]:
            # entries written by encode_entry hold exactly the fields of Result: build it
            # directly (half the cost); anything else goes through result_from_dict
            try:
                result = Result(**r) if len(r) == _RESULT_WIDTH else result_from_dict(r)
            except TypeError:
                result = result_from_dict(r)
            append(Record(tenant, run, result))
    return records


def decode_entry_rows(data: bytes) -> list[RunRows]:
    """The rows of one log entry (what :func:`decode_entry` gives, without a Result or Record
    per result); raises ValueError/KeyError/TypeError if it is malformed."""
    if data.startswith(ROWS_ENTRY_PREFIX):
        return _check_outcomes([_rows_entry(data)])
    obj = _entry_object(data)
    if obj.get("v") in (BODY_ENTRY_VERSION, GZIP_ENTRY_VERSION):
        rows = rows_of_checked(obj["batch"]["results"])  # checked at ingest: every field, typed
        # the entry itself holds the results as they arrived (see store.rows.results_in)
        groups = [RunRows(str(obj["tenant"]), run_from_dict(obj["run"]), rows, data)]
    else:
        groups = rows_of_records(decode_entry(data))
    return _check_outcomes(groups)


def _rows_entry(data: bytes) -> RunRows:
    """The group of a version 4 entry: its rows as written (no gunzip, no result parsed);
    its blob is the entry without the rows line (a version 3 entry)."""
    header, rows_line, gzipped = data.split(b"\n", 2)
    head = orjson.loads(header)
    rows = orjson.loads(rows_line)
    if type(rows) is not list or not all(
        type(row) is list and len(row) == _ROW_WIDTH for row in rows
    ):
        raise ValueError("the rows line is not an array of rows")
    blob = b"%s%s\n%s" % (GZIP_ENTRY_PREFIX, header[len(ROWS_ENTRY_PREFIX) :], gzipped)
    rows_of_entry: list[Row] = [tuple(row) for row in rows]
    return RunRows(str(head["tenant"]), run_from_dict(head["run"]), rows_of_entry, blob)


def _check_outcomes(groups: list[RunRows]) -> list[RunRows]:
    unknown = {row[3] for g in groups for row in g.rows} - OUTCOMES
    if unknown:
        raise ValueError(f"unknown outcome {sorted(map(repr, unknown))[0]}")
    return groups


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class LocalLog:
    """The log file: append (writer side), read and mark consumed (processor side)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._consumed = 0
        self._truncated = 0
        self.last_offset = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._writer.executescript(_SCHEMA)
        self._reader = connect(self.path)
        # sqlite_sequence keeps the last offset even after every entry was truncated
        row = self._writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        self.last_offset = int(row[0]) if row else 0
        first = self._writer.execute("SELECT min(offset) FROM log").fetchone()[0]
        self._truncated = self.last_offset if first is None else int(first) - 1

    def append(self, entries: Sequence[bytes]) -> int:
        """Insert entries in one durable transaction; return the offset of the last one."""
        conn = self._writer
        assert conn is not None, "LocalLog.open() first"
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.executemany("INSERT INTO log (data) VALUES (?)", [(e,) for e in entries])
            del cur
            last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.last_offset = last
        return last

    def iter_from(self, after: int, limit: int) -> Iterator[tuple[int, bytes]]:
        """Entries with offset > ``after``, oldest first, at most ``limit``, read one at a time
        (a caller that stops early reads no more than it used)."""
        with self._read_lock:
            conn = self._reader
            if conn is None:
                raise sqlite3.ProgrammingError(f"{self.path} is not open")
            cursor = conn.execute(
                "SELECT offset, data FROM log WHERE offset > ? ORDER BY offset LIMIT ?",
                (after, limit),
            )
            try:
                for offset, data in cursor:
                    yield int(offset), bytes(data)
            finally:
                cursor.close()

    def mark_consumed(self, offset: int) -> None:
        """Entries up to ``offset`` are safely elsewhere and may be deleted."""
        self._consumed = max(self._consumed, offset)

    def truncate(self, force: bool = False) -> None:
        """Delete consumed entries (writer side; cheap no-op when there is little to delete)."""
        upto = self._consumed
        conn = self._writer
        if conn is None or upto <= self._truncated:
            return
        if force or upto - self._truncated >= TRUNCATE_EVERY:
            conn.execute("DELETE FROM log WHERE offset <= ?", (upto,))
            self._truncated = upto

    def close(self) -> None:
        with self._read_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    conn.close()
            self._reader = self._writer = None


_Waiter = tuple[bytes, Sequence[Record], "asyncio.Future[None]", asyncio.AbstractEventLoop]

#: ``callback(first_offset, records_per_entry)`` after a commit: entry i has offset first + i.
CommitCallback = Callable[[int, list[Sequence[Record]]], None]


class LocalLogSink:
    """:class:`~collector_server.sinks.Sink` writing to a :class:`LocalLog`."""

    def __init__(self, path: Path) -> None:
        self.log = LocalLog(path)
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._subscribers: list[CommitCallback] = []
        self._need_records = False
        self._error: str | None = None
        self._closed = False

    def subscribe(self, callback: CommitCallback, *, records: bool = True) -> None:
        """Call ``callback(first_offset, records_per_entry)`` in the writer thread after every
        commit (the records are durable by then; the in-process processor applies them without
        reading them back).  A subscriber that reads the log itself passes ``records=False``:
        its callback may get empty sequences, and batches may be published as bodies."""
        self._subscribers.append(callback)
        self._need_records = self._need_records or records

    @property
    def takes_bodies(self) -> bool:
        """Whether :meth:`publish_body` may be used (no subscriber needs Record objects)."""
        return not self._need_records

    async def publish_body(
        self,
        tenant: str,
        run: RunInfo,
        body: bytes,
        gzipped: bytes | None = None,
        results: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Publish a batch checked by ``ingest.check_batch``: its JSON body (or ``gzipped``,
        the same body as it came, with the rows of ``results``, its checked results) is the
        entry's payload as it is (no Record objects; see :attr:`takes_bodies`)."""
        await self._put(encode_body_entry(tenant, run, body, gzipped, results), ())

    async def start(self) -> None:
        await asyncio.to_thread(self.log.open)
        self._thread = threading.Thread(target=self._run, name="testengine-log-writer")
        self._thread.start()

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        await self._put(encode_entry(records), records)

    async def _put(self, entry: bytes, records: Sequence[Record]) -> None:
        if self._thread is None or self._closed:
            raise SinkUnavailable("[testengine] the local log is not open")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((entry, records, done, loop))
        await done

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self.log.close()

    def status(self) -> dict[str, object]:
        alive = self._thread is not None and self._thread.is_alive() and not self._closed
        return {
            "ready": alive and self._error is None,
            "kind": "local",
            "path": str(self.log.path),
            "last_offset": self.log.last_offset,
            "error": self._error,
        }

    # -- writer thread ---------------------------------------------------------------------

    def _batches(self) -> Iterator[list[_Waiter]]:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            yield group
            if stop:
                return

    def _run(self) -> None:
        for group in self._batches():
            try:
                last = self.log.append([entry for entry, _, _, _ in group])
            except Exception as exc:
                self._error = f"cannot write {self.log.path}: {exc}"
                log.error("[testengine] %s", self._error)
                failure = SinkUnavailable(f"[testengine] {self._error}")
                for _, _, done, loop in group:
                    _notify(loop, done, failure)
                continue
            self._error = None
            for _, _, done, loop in group:
                _notify(loop, done, None)
            first = last - len(group) + 1  # one writer: offsets of a commit are consecutive
            for callback in self._subscribers:
                callback(first, [records for _, records, _, _ in group])
            try:
                self.log.truncate()
            except sqlite3.Error as exc:
                log.warning("[testengine] cannot truncate %s: %s", self.log.path, exc)
        with contextlib.suppress(sqlite3.Error):
            self.log.truncate(force=True)


def _notify(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], error: BaseException | None
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, done, error)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
