"""The processor's write path: log entries decoded into rows, prepared writes, the tests
statistics kept by the writer (real SQLite files, real log entries)."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector_server import ingest
from collector_server.consumer import decode_message
from collector_server.processor import LocalProcessor
from collector_server.settings import CollectorSettings
from collector_server.sinks.local import (
    LocalLog,
    decode_entry,
    decode_entry_rows,
    encode_body_entry,
    encode_entry,
)
from collector_server.store.rows import (
    results_in,
    row_of_result,
    rows_of_records,
    rows_of_values,
)
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import (
    Batch,
    Record,
    batch_to_dict,
    decode_record,
    encode_record,
    records_of,
    result_to_dict,
)
from tests.collector.batches import batch, result

LIMITS = ingest.Limits.from_settings(CollectorSettings())


def body_entry(b: Batch, tenant: str = "t", *, gzipped: bool = False, rows: bool = True) -> bytes:
    """The log entry the collector writes for a plugin-shaped batch (sent gzipped or not;
    ``rows=False``: a gzipped one as it was written before entries carried their rows)."""
    raw = orjson.dumps(batch_to_dict(b), default=dict)
    checked = ingest.check_batch(orjson.loads(raw), raw, LIMITS)
    assert isinstance(checked, ingest.Checked)
    wire = gzip.compress(raw) if gzipped else None
    return encode_body_entry(
        tenant, checked.run, checked.body, wire, checked.results if rows else None
    )


def answers(store: SqliteStore, tenant: str = "t", suite: str = "default") -> dict[str, Any]:
    """Everything the read API answers about a suite (first pages, large enough)."""
    runs = store.runs(tenant, suite, limit=1000).items
    for run in runs:  # when the write happened, not what was written
        del run["first_seen"], run["last_seen"]
    return {
        "suites": store.suites(tenant, limit=1000).items,
        "tests": store.tests(tenant, suite, limit=1000).items,
        "runs": runs,
        "results": store.results(tenant, suite, limit=10_000).items,
        "durations": store.durations(tenant, suite),
    }


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzipped"])
def test_body_entry_rows_are_its_results_and_its_bytes_their_blob(gzipped: bool) -> None:
    b = batch(4, message="boom", tags={"a": "1"})
    entry = body_entry(b, gzipped=gzipped, rows=False)
    assert entry.startswith(b'{"v":3,') is gzipped
    if gzipped:
        assert b'"results"' not in entry  # the body stays compressed
    (group,) = decode_entry_rows(entry)
    assert (group.tenant, group.run) == ("t", b.run)
    assert group.rows == [
        (r.id, r.nodeid, r.file, r.outcome, r.duration, r.start, r.stop) for r in b.results
    ]
    assert group.blob is entry  # the results as they arrived, not encoded again
    assert results_in(group.blob) == [result_to_dict(r) for r in b.results]
    (expected,) = rows_of_records(decode_entry(entry))
    assert (expected.rows, results_in(expected.blob)) == (group.rows, results_in(group.blob))


def test_gzipped_body_entry_carries_its_rows_and_stores_without_them() -> None:
    b = batch(5, message="boom\nwith a newline", tags={"a": "1\n2"})
    odd = result(9, nodeid="t/test_x.py::test_y[a\nb]", outcome="failed")  # escaped in JSON
    b = Batch(b.run, [*b.results, odd])
    entry = body_entry(b, gzipped=True)
    before = body_entry(b, gzipped=True, rows=False)
    assert entry.startswith(b'{"v":4,')
    assert entry.count(b"\n", 0, len(entry) - len(before.partition(b"\n")[2])) == 2
    (group,) = decode_entry_rows(entry)
    (expected,) = decode_entry_rows(before)  # gunzipped and parsed
    assert (group.tenant, group.run, group.rows) == (expected.tenant, expected.run, expected.rows)
    assert all(type(row) is tuple for row in group.rows)
    assert group.blob == before  # the store keeps the entry without the rows line
    assert results_in(entry) == results_in(group.blob) == [result_to_dict(r) for r in b.results]
    assert decode_entry(entry) == decode_entry(before)


def test_record_entries_decode_into_the_same_rows() -> None:
    a, b = batch(2), batch(3)
    records = [*records_of("x", a), *records_of("y", a), *records_of("x", b)]
    groups = decode_entry_rows(encode_entry(records))
    assert [(g.tenant, g.run.run_id, len(g.rows)) for g in groups] == [
        ("x", a.run.run_id, 2),
        ("y", a.run.run_id, 2),
        ("x", b.run.run_id, 3),
    ]
    assert groups == rows_of_records(records)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"v": 9}', id="unknown-version"),
        pytest.param(b'{"v": 2, "tenant": "t", "run": {"run_id": "r"}}', id="no-batch"),
        pytest.param(
            b'{"v": 2, "tenant": "t", "run": {"run_id": "r"}, "batch": {"results": [{"id": "x"}]}}',
            id="result-missing-fields",
        ),
        pytest.param(b'{"v":3,"tenant":"t","run":{"run_id":"r"}}\nnot gzip', id="damaged-gzip"),
        pytest.param(b'{"v":4,"tenant":"t","run":{"run_id":"r"}}\n[["a"]]\n', id="short-row"),
        pytest.param(b'{"v":4,"tenant":"t","run":{"run_id":"r"}}\n{}\n', id="rows-object"),
        pytest.param(b'{"v":4,"tenant":"t","run":{"run_id":"r"}}\n[]', id="no-body-line"),
        pytest.param(b'{"v":4,"tenant":"t","run":{"run_id":"r"}}\n[[1,2\n', id="rows-not-json"),
    ],
)
def test_malformed_entry_is_skipped_and_the_next_applied(
    tmp_path: Path, open_store: Any, entry: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = open_store()
    good = batch(2)
    log.append([entry, body_entry(good)])
    processor = LocalProcessor(log, store)
    assert processor.step() == 2
    assert store.offsets() == {"local": 2}
    assert [r["id"] for r in store.results("t", "default", limit=10).items] == [
        r.id for r in good.results
    ]
    assert "skipping unreadable log entry 1" in caplog.text
    log.close()


def test_entry_with_an_unknown_outcome_is_skipped(tmp_path: Path, open_store: Any) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = open_store()
    entry = body_entry(batch(1)).replace(b'"outcome":"passed"', b'"outcome":"lost"')
    log.append([entry])
    processor = LocalProcessor(log, store)
    assert processor.step() == 1
    assert store.results("t", "default", limit=10).items == []
    log.close()


def test_result_in_two_entries_is_stored_and_counted_once(tmp_path: Path, open_store: Any) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = open_store()
    b = batch(3)
    again = Batch(b.run, [b.results[1], result(7)])  # a retried batch sends a result again
    log.append([body_entry(b), body_entry(again)])
    processor = LocalProcessor(log, store)
    assert processor.step() == 2
    stored = store.results("t", "default", limit=10).items
    assert sorted(r["id"] for r in stored) == sorted(
        [r.id for r in b.results] + [again.results[1].id]
    )
    assert [t["runs"] for t in store.tests("t", "default", limit=10).items] == [1, 1, 1, 1]
    (run,) = store.runs("t", "default", limit=10).items
    assert run["total"] == 4
    # and once more in a later write: nothing new
    log.append([body_entry(b)])
    assert processor.step() == 1
    assert len(store.results("t", "default", limit=10).items) == 4
    log.close()


def many_executions() -> list[Record]:
    """Several runs of a few tests, with every outcome, out-of-order stops, retries."""
    records: list[Record] = []
    outcomes = ["passed", "failed", "passed", "skipped", "passed", "error", "xfailed", "xpassed"]
    for run in range(6):
        b = batch(0)
        for i in range(40):
            nodeid = f"t.py::test_{i % 5}"
            outcome = outcomes[(i + run) % len(outcomes)]
            stop = 100.0 + run * 50 + (i * 7919) % 40  # not in order
            records.append(
                Record(
                    "t",
                    b.run,
                    result(
                        i,
                        nodeid=nodeid,
                        outcome=outcome,
                        duration=float(i % 9) + run / 10,
                        start=stop - 1.0 if i % 3 else 0.0,
                        stop=stop if i % 11 else 0.0,
                    ),
                )
            )
    return records


def test_statistics_of_one_write_equal_those_of_one_write_per_result(open_store: Any) -> None:
    records = many_executions()
    one_by_one, batched, in_rounds = open_store("a.db"), open_store("b.db"), open_store("c.db")
    for record in records:
        one_by_one.write([record])
    assert batched.write(records) == len(records)
    for start in range(0, len(records), 37):
        in_rounds.write(records[start : start + 37])
    expected = answers(one_by_one)
    assert expected["tests"][0]["runs"] == 48
    assert answers(batched) == expected
    assert answers(in_rounds) == expected


def test_statistics_stay_right_when_another_connection_writes(open_store: Any) -> None:
    records = many_executions()
    first = open_store()
    second = SqliteStore(first.path, clock=lambda: 1234.0).open()  # e.g. a second consumer
    reference = open_store("reference.db")
    try:
        for start in range(0, len(records), 20):
            part = records[start : start + 20]
            (first if start % 40 else second).write(part)
            reference.write(part)
    finally:
        second.close()
    assert answers(first) == answers(reference)


def test_a_failed_write_applied_again_counts_once(open_store: Any) -> None:
    store = open_store()
    reference = open_store("reference.db")
    b = batch(3)
    store.write(records_of("t", b))
    reference.write(records_of("t", b))
    later = [Record("t", b.run, result(i, stop=2e9 + i)) for i in range(3)]
    work = store.prepare(rows_of_records(later))
    conn = store._conn
    assert conn is not None
    conn.execute(
        "CREATE TEMP TRIGGER no_suites BEFORE UPDATE ON suites"
        " BEGIN SELECT RAISE(FAIL, 'disk full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.write_prepared(work, offsets={"local": 5})
    assert store.offsets() == {}
    conn.execute("DROP TRIGGER no_suites")
    assert store.write_prepared(work, offsets={"local": 5}) == 3
    reference.write(later)
    assert store.offsets() == {"local": 5}
    assert answers(store) == answers(reference)


def kafka_values() -> list[bytes | None]:
    """Values of the results topic: plain ones, one with an extra key (another producer),
    malformed ones, in between."""
    records = many_executions()
    values: list[bytes | None] = [encode_record(r) for r in records]
    extra = orjson.loads(encode_record(records[3]))
    extra["result"]["new_field"] = 1  # a newer producer: the unknown key is dropped
    values[3] = orjson.dumps(extra)
    wrong = orjson.loads(encode_record(records[5]))
    wrong["result"]["outcome"] = ["passed"]
    values[5] = orjson.dumps(wrong)
    values[7] = None
    values[9] = b"\xff"
    return values


def test_kafka_values_give_the_rows_and_problems_of_their_records(open_store: Any) -> None:
    values = kafka_values()
    groups, problems = rows_of_values(values, decode_message)
    expected = [(i, decode_message(v)[1]) for i, v in enumerate(values) if decode_message(v)[1]]
    assert problems == expected
    assert [i for i, _ in problems] == [5, 7, 9]
    records = [r for v in values if (r := decode_message(v)[0]) is not None]
    by_rows, by_records = open_store("rows.db"), open_store("records.db")
    assert by_rows.write_rows(groups) == by_records.write(records) == len(values) - 3
    assert answers(by_rows) == answers(by_records)
    stored = {r["id"]: r for r in answers(by_rows)["results"]}
    assert "new_field" not in stored[records[3].result.id]


def test_values_of_one_run_keep_their_results_bytes_in_the_blob() -> None:
    # the records of a batch start alike: after the first, only the result is parsed, and
    # its bytes are stored as they came (1.50 stays 1.50; encoded again it would be 1.5)
    values = [encode_record(r) for r in many_executions()[:3]]
    values = [v.replace(b'"call":0.5,', b'"call":0.50,') for v in values]
    assert all(b'"call":0.50,' in v for v in values)
    (group,), problems = rows_of_values(values, decode_message)
    assert problems == []
    assert group.rows == [row_of_result(decode_record(v).result) for v in values]
    assert results_in(group.blob) == [result_to_dict(decode_record(v).result) for v in values]
    assert group.blob.count(b'"call":0.50,') == 2  # all but the first, parsed whole


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b',"tenant":"u"}', id="a-key-after-the-result"),
        pytest.param(b"}}", id="two-braces"),
        pytest.param(b" }", id="space"),
        pytest.param(b"", id="cut-short"),
    ],
)
def test_a_value_that_starts_like_the_one_before_but_ends_otherwise_is_decoded_whole(
    tail: bytes,
) -> None:
    first, second = (encode_record(r) for r in many_executions()[:2])
    odd = second[:-1] + tail  # the same head, something else after the result
    values: list[bytes | None] = [first, odd]
    groups, problems = rows_of_values(values, decode_message)
    record, problem = decode_message(odd)
    expected = [] if record is None else [(record.tenant, row_of_result(record.result))]
    assert [(g.tenant, row) for g in groups for row in g.rows][1:] == expected
    assert problems == ([] if record is not None else [(1, problem)])


def test_record_entry_with_an_unknown_outcome_is_skipped(tmp_path: Path, open_store: Any) -> None:
    log = LocalLog(tmp_path / "log.db")
    log.open()
    store = open_store()
    bad = encode_entry(records_of("t", batch(1))).replace(b'"outcome":"passed"', b'"outcome":"x"')
    good = batch(2)
    log.append([bad, encode_entry(records_of("t", good))])
    processor = LocalProcessor(log, store)
    assert processor.step() == 2
    assert sorted(r["id"] for r in store.results("t", "default", limit=10).items) == sorted(
        r.id for r in good.results
    )
    log.close()


@pytest.mark.parametrize("tags", ["ab", 5, [1]], ids=["string", "number", "list"])
def test_a_value_whose_run_tags_are_not_an_object_is_a_problem_not_a_crash(tags: Any) -> None:
    records = many_executions()
    bad = orjson.loads(encode_record(records[0]))
    bad["run"]["tags"] = tags
    values: list[bytes | None] = [orjson.dumps(bad), *(encode_record(r) for r in records[1:4])]
    groups, problems = rows_of_values(values, decode_message)
    record, problem = decode_message(values[0])
    assert record is None
    assert problem
    assert problems == [(0, problem)]
    assert [row[0] for g in groups for row in g.rows] == [r.result.id for r in records[1:4]]


@pytest.mark.parametrize("field", ["setup", "call", "teardown", "duration", "start", "stop"])
@pytest.mark.parametrize("value", ["1.5", True, None], ids=["string", "bool", "null"])
def test_a_value_with_a_time_that_is_not_a_number_is_decided_by_the_slow_path(
    field: str, value: Any
) -> None:
    records = many_executions()
    odd = orjson.loads(encode_record(records[0]))
    odd["result"][field] = value
    values: list[bytes | None] = [orjson.dumps(odd), encode_record(records[1])]
    groups, problems = rows_of_values(values, decode_message)
    record, problem = decode_message(values[0])
    if record is None:
        assert problems == [(0, problem)]
    else:  # accepted the way decode_message reads it
        assert problems == []
        assert groups[0].rows[0][4:] == (
            record.result.duration,
            record.result.start,
            record.result.stop,
        )
