"""The local log and the in-process processor: durable appends, exact resume, truncation."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from collector_server.processor import LocalProcessor
from collector_server.sinks.local import LocalLog, LocalLogSink, decode_entry, encode_entry
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import records_of
from tests.collector.batches import batch

pytestmark = pytest.mark.anyio


def test_entry_roundtrip_keeps_tenants_and_runs() -> None:
    a, b = batch(2), batch(1)
    records = [*records_of("x", a), *records_of("y", a), *records_of("x", b)]
    decoded = decode_entry(encode_entry(records))
    assert decoded == records


def test_processor_resumes_exactly_after_restart(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = SqliteStore(tmp_path / "store.db").open()
    sent = [records_of("t", batch(3)) for _ in range(4)]
    for records in sent[:2]:
        log.append([encode_entry(records)])
    first = LocalProcessor(log, store)
    assert first.step() == 2
    assert store.offsets() == {"local": 2}
    for records in sent[2:]:
        log.append([encode_entry(records)])
    # a new processor (after a restart) starts at the stored offset
    second = LocalProcessor(log, store)
    second.offset = store.offsets()["local"]
    assert second.step() == 2
    assert second.offset == 4
    assert len(store.results("t", "default", limit=100).items) == 12
    log.close()
    store.close()


def test_processor_batches_large_backlogs(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = SqliteStore(tmp_path / "store.db").open()
    for _ in range(10):
        log.append([encode_entry(records_of("t", batch(4)))])
    processor = LocalProcessor(log, store, batch_records=10)
    rounds = [processor.step() for _ in range(6)]
    assert rounds == [3, 3, 3, 1, 0, 0]  # 12 records per round at most: 3 entries of 4
    assert len(store.results("t", "default", limit=100).items) == 40
    log.close()
    store.close()


def test_unreadable_entry_is_skipped(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = SqliteStore(tmp_path / "store.db").open()
    log.append([b"not json", encode_entry(records_of("t", batch(2)))])
    processor = LocalProcessor(log, store)
    assert processor.step() == 2
    assert len(store.results("t", "default", limit=10).items) == 2
    log.close()
    store.close()


async def test_sink_wakes_processor_and_truncates_consumed_entries(tmp_path: Path) -> None:
    sink = LocalLogSink(tmp_path / "log.db")
    store = SqliteStore(tmp_path / "store.db").open()
    await sink.start()
    processor = LocalProcessor(sink.log, store)
    processor.start()
    sink.subscribe(processor.on_commit)
    try:
        for _ in range(300):
            await sink.publish(records_of("t", batch(1)))
        assert await anyio.to_thread.run_sync(processor.wait_caught_up, 10.0)
        assert processor.offset == 300
        await sink.publish(records_of("t", batch(1)))  # the writer truncates as it goes
        with sqlite3.connect(sink.log.path) as conn:
            left = conn.execute("SELECT count(*) FROM log").fetchone()[0]
        conn.close()
        assert left < 300
    finally:
        processor.stop()
        await sink.close()
    assert len(store.results("t", "default", limit=1000).items) == 301
    # reopening keeps offsets monotonic even though old entries are gone
    log = LocalLog(tmp_path / "log.db")
    log.open()
    assert log.last_offset == 301
    log.close()
    store.close()


async def test_concurrent_publishes_are_group_committed(tmp_path: Path) -> None:
    sink = LocalLogSink(tmp_path / "log.db")
    await sink.start()
    commits: list[int] = []
    sink.subscribe(lambda first, batches: commits.append(first + len(batches) - 1))
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(sink.publish, records_of("t", batch(2)))
    finally:
        await sink.close()
    assert commits[-1] == 200
    assert len(commits) < 200  # several publishes shared a commit


async def test_publish_after_close_is_unavailable(tmp_path: Path) -> None:
    from collector_server.sinks import SinkUnavailable

    sink = LocalLogSink(tmp_path / "log.db")
    await sink.start()
    await sink.close()
    with pytest.raises(SinkUnavailable):
        await sink.publish(records_of("t", batch(1)))
    assert sink.status()["ready"] is False


@pytest.mark.parametrize("handoff", [200_000, 5], ids=["in-memory", "overflow-to-log"])
async def test_handoff_and_log_give_the_same_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handoff: int
) -> None:
    monkeypatch.setattr("collector_server.processor.HANDOFF_RECORDS", handoff)
    sink = LocalLogSink(tmp_path / "log.db")
    store = SqliteStore(tmp_path / "store.db").open()
    await sink.start()
    processor = LocalProcessor(sink.log, store, batch_records=7)
    sink.subscribe(processor.on_commit)  # not started yet: commits pile up in the handoff
    sent = [records_of("t", batch(3)) for _ in range(20)]
    try:
        async with anyio.create_task_group() as tg:
            for records in sent:
                tg.start_soon(sink.publish, records)
        while processor.step():
            pass
    finally:
        await sink.close()
    assert processor.offset == 20
    stored = store.results("t", "default", limit=1000).items
    assert sorted(r["id"] for r in stored) == sorted(r.result.id for rs in sent for r in rs)
    assert store.offsets() == {"local": 20}
    store.close()


def test_wait_caught_up_times_out(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = SqliteStore(tmp_path / "store.db").open()
    log.append([encode_entry(records_of("t", batch(1)))])
    processor = LocalProcessor(log, store)  # not started: nothing applies the entry
    assert processor.wait_caught_up(0.05) is False
    assert processor.lag == 1
    done = threading.Event()
    log.close()
    store.close()
    done.set()


class FlakyStore(SqliteStore):
    """Fails the first ``failures`` writes, like a full disk that gets space back."""

    failures = 2

    def write_prepared(self, write, **options):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().write_prepared(write, **options)


def test_processor_retries_a_failing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("collector_server.processor.RETRY_WAIT", 0.01)
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = FlakyStore(tmp_path / "store.db").open()
    log.append([encode_entry(records_of("t", batch(3)))])
    processor = LocalProcessor(log, store)
    processor.start()
    try:
        assert processor.wait_caught_up(10.0)
    finally:
        processor.stop()
    assert len(store.results("t", "default", limit=10).items) == 3
    assert "database or disk is full; retrying" in caplog.text
    log.close()
    store.close()


def test_a_backlog_read_ahead_is_applied_once_across_failed_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("collector_server.processor.RETRY_WAIT", 0.01)
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = FlakyStore(tmp_path / "store.db").open()
    store.failures = 3
    sent = [records_of("t", batch(5)) for _ in range(30)]
    log.append([encode_entry(records) for records in sent])
    # rounds of 2 entries: the next round is read ahead while one is written (and failing)
    applied: list[tuple[int, int]] = []
    processor = LocalProcessor(
        log, store, batch_records=10, on_applied=lambda n, new: applied.append((n, new))
    )
    processor.start()
    try:
        assert processor.wait_caught_up(30.0)
    finally:
        processor.stop()
    assert store.failures == 0
    assert store.offsets() == {"local": 30}
    # each round written once: a round applied twice would count its records twice
    assert (sum(n for n, _ in applied), sum(new for _, new in applied)) == (150, 150)
    stored = store.results("t", "default", limit=1000).items
    assert sorted(r["id"] for r in stored) == sorted(r.result.id for rs in sent for r in rs)
    assert [t["runs"] for t in store.tests("t", "default", limit=10).items] == [30] * 5
    log.close()
    store.close()
