"""The Kafka sink and the consumer against a real broker, where the commands cannot reach:
the record format on the wire, several kinds of malformed records in mid-batch, a store write
that fails.  (Counts through the real commands: test_kafka_collector.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from collector_server.consumer import ResultConsumer
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.sinks.kafka import KafkaSink
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Record, decode_record, encode_record, new_id
from tests.support.kafka_collector import committed
from tests.support.kafka_io import (
    consuming,
    header,
    produce,
    read_all,
    sample_records,
)
from tests.support.memory_store import MemoryStore

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


async def publish_all(sink: KafkaSink, batches: list[list[Record]]) -> None:
    await sink.start()
    try:
        for batch in batches:
            await sink.publish(batch)
    finally:
        await sink.close()


def test_record_key_value_and_headers(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    records = sample_records(3, tenant="acme", suite="api")
    sink = KafkaSink(kafka_bootstrap, tmp_path / "wal", topic=kafka_topic, partitions=2)
    asyncio.run(publish_all(sink, [records]))

    messages = read_all(kafka_bootstrap, kafka_topic, expected=3)
    assert len(messages) == 3
    by_id = {r.result.id: r for r in records}
    for message in messages:
        value = message.value()
        assert value is not None
        record = decode_record(value)
        original = by_id[record.result.id]
        assert message.key() == f"acme/api/{original.result.nodeid}".encode()
        assert value == encode_record(original)
        assert orjson.loads(value)["schema"] == 1
        assert message.headers() == [("schema", b"1"), ("tenant", b"acme")]
    # every execution of one test lands in the same partition
    again = [
        dataclasses.replace(r, result=dataclasses.replace(r.result, id=new_id())) for r in records
    ]
    asyncio.run(
        publish_all(KafkaSink(kafka_bootstrap, tmp_path / "wal", topic=kafka_topic), [again])
    )
    partitions: dict[bytes | str | None, set[int | None]] = {}
    for message in read_all(kafka_bootstrap, kafka_topic, expected=6):
        partitions.setdefault(message.key(), set()).add(message.partition())
    assert len(partitions) == 3
    assert all(len(p) == 1 for p in partitions.values())


def test_malformed_records_go_to_the_dead_letter_topic(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    good = sample_records(6)
    bad_outcome = orjson.loads(encode_record(good[0]))
    bad_outcome["result"]["id"] = "bad-outcome"
    bad_outcome["result"]["outcome"] = "exploded"
    raw: list[Record | bytes] = [
        *good[:3],
        b"not json at all",
        b'{"schema": 99}',
        orjson.dumps(bad_outcome),
        *good[3:],
    ]
    produce(kafka_bootstrap, kafka_topic, raw)
    store = MemoryStore()
    registry = CollectorRegistry()
    consumer = ResultConsumer(
        kafka_bootstrap,
        kafka_topic,
        "processors",
        store,
        batch_size=2,  # malformed records in the middle of several batches
        partitions=1,
        consumer_config=FAST_GROUP,
        metrics=KafkaMetrics(registry),
    )
    with consuming(consumer) as stats:
        assert store.wait_for(6, timeout=20)
    assert store.ids == {r.result.id for r in good}
    assert stats.malformed == 3
    assert registry.get_sample_value("testengine_consumer_malformed_records_total") == 3

    dead = read_all(kafka_bootstrap, f"{kafka_topic}.dlq", expected=3)
    assert [m.value() for m in dead] == raw[3:6]
    errors = [header(m, "testengine.error") for m in dead]
    assert errors[0].startswith(b"JSONDecodeError")
    assert errors[1] == b"ValueError: not a testengine record of schema version 1"
    assert errors[2].startswith(b"result.outcome 'exploded' is not one of")
    assert [header(m, "testengine.source.offset") for m in dead] == [
        b"3",
        b"4",
        b"5",
    ]


def test_a_failed_store_write_is_retried_before_the_commit(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    records = sample_records(50)
    produce(kafka_bootstrap, kafka_topic, records)
    store = MemoryStore()
    store.fail_writes = 2
    consumer = ResultConsumer(
        kafka_bootstrap,
        kafka_topic,
        "processors",
        store,
        batch_size=50,
        partitions=1,
        consumer_config=FAST_GROUP,
    )
    with consuming(consumer) as stats:
        assert store.wait_for(50, timeout=20)
    assert store.ids == {r.result.id for r in records}
    assert store.duplicates == 0
    assert stats.retries == 2
    assert store.calls == 3


def test_statistics_of_full_batches_wait_and_an_empty_poll_merges_them(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    records = [r for _ in range(3) for r in sample_records(10)]  # 10 tests, 3 runs each
    produce(kafka_bootstrap, kafka_topic, records)
    store = SqliteStore(tmp_path / "store.db", clock=lambda: 1234.0).open()
    reference = SqliteStore(tmp_path / "reference.db", clock=lambda: 1234.0).open()
    consumer = ResultConsumer(
        kafka_bootstrap,
        kafka_topic,
        "processors",
        store,
        batch_size=10,  # full batches: their statistics may wait
        partitions=1,
        consumer_config=FAST_GROUP,
        poll_timeout=0.2,
    )
    consumer.start()
    try:
        polled = [consumer.poll_once() for _ in range(100) if not store.statistics_waiting]
        assert polled[-1] == 10, polled  # a full batch, its statistics waiting
        assert store.tests("acme", "unit", limit=100).items == []
        for _ in range(100):  # bounded: the rest, then an empty poll
            if consumer.poll_once() == 0:
                break
        assert not store.statistics_waiting
        assert len(store.results("acme", "unit", limit=100).items) == 30
        reference.write(records)
        tests = store.tests("acme", "unit", limit=100).items
        assert [t["runs"] for t in tests] == [3] * 10
        assert tests == reference.tests("acme", "unit", limit=100).items
    finally:
        consumer.close()
        store.close()
        reference.close()


def test_commits_do_not_hold_up_the_next_batch_and_a_failed_one_is_logged(
    kafka_bootstrap: str, kafka_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    produce(kafka_bootstrap, kafka_topic, sample_records(30))
    store = MemoryStore()
    consumer = ResultConsumer(
        kafka_bootstrap,
        kafka_topic,
        "processors",
        store,
        batch_size=10,
        partitions=1,
        consumer_config=FAST_GROUP,
        poll_timeout=0.2,
    )
    consumer.start()
    try:
        polled, unanswered = [], []
        for _ in range(200):
            if len(store.ids) >= 30:
                break
            polled.append(consumer.poll_once())
            unanswered.append(consumer._unanswered)
        assert sum(polled) == 30
        # a batch's commit was sent without waiting for its answer (at most one at a time)
        assert max(unanswered) == 1, unanswered
        # answered and on the broker by the time more polls ran
        for _ in range(50):
            if consumer._unanswered == 0:
                break
            consumer.poll_once()  # serves the answers
        assert consumer._unanswered == 0
        assert committed(kafka_bootstrap, kafka_topic, "processors", partitions=1) == 30
        assert consumer.stats.commit_failures == 0

        consumer._pending[(kafka_topic, 7)] = 1  # a partition the topic does not have
        consumer._commit(consumer._require(), wait=False)
        with caplog.at_level(logging.WARNING, logger="testengine"):
            for _ in range(50):
                if consumer.stats.commit_failures:
                    break
                consumer.poll_once()
        assert consumer.stats.commit_failures == 1
        assert "offset commit failed (Broker: Unknown topic or partition)" in caplog.text
        assert "1 failed" in consumer.stats.summary()

        # the same refused by a commit that waits for its answer (on revoke, at the end)
        consumer._pending[(kafka_topic, 7)] = 1
        consumer._commit(consumer._require())
        assert consumer.stats.commit_failures == 2
        assert "2 failed" in consumer.stats.summary()
    finally:
        consumer._pending.clear()
        consumer.close()
