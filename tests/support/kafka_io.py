"""Kafka test helpers: sample records, a plain producer and reader, a consumer in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from confluent_kafka import Consumer, Message, Producer

from collector_server.consumer import ConsumerStats, ResultConsumer
from collector_server.kafka_admin import client_config, ensure_topic
from collector_server.kafka_records import Outgoing
from pytest_testengine.model import Record, new_id, records_of
from tests.collector.batches import batch


def sample_records(count: int, *, tenant: str = "acme", suite: str = "unit") -> list[Record]:
    """The records of one batch of ``count`` results (tests.collector.batches)."""
    return list(records_of(tenant, batch(count, suite=suite)))


def produce(
    bootstrap: str, topic: str, items: Sequence[Record | bytes], *, partitions: int = 1
) -> None:
    """Write records (in the sink's format) or raw values straight to ``topic``; wait for acks."""
    ensure_topic(bootstrap, topic, partitions=partitions)
    producer = Producer(client_config(bootstrap, {"enable.idempotence": True}))
    errors: list[object] = []

    def report(error: object, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    for item in items:
        if isinstance(item, Record):
            out = Outgoing.of(item)
            producer.produce(
                topic, value=out.value, key=out.key, headers=out.headers(), on_delivery=report
            )
        else:
            producer.produce(topic, value=item, key=b"raw", on_delivery=report)
    try:
        left = producer.flush(30)
    finally:
        close(producer)
    assert left == 0, f"{left} records not acknowledged"
    assert not errors, errors


def close(client: object) -> None:
    """Close a producer where confluent-kafka has ``close()`` (newer versions)."""
    closer = getattr(client, "close", None)
    if closer is not None:
        closer()


def header(message: Message, name: str) -> bytes:
    """The value of header ``name`` as bytes."""
    headers = message.headers() or []
    for key, value in headers.items() if isinstance(headers, dict) else headers:
        if key == name:
            return value.encode() if isinstance(value, str) else (value or b"")
    raise KeyError(name)


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list[Message]:
    """Read ``topic`` from the start (no group commits) until ``expected`` records arrived."""
    consumer = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"reader-{new_id()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    try:
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


@contextmanager
def consuming(consumer: ResultConsumer) -> Iterator[ConsumerStats]:
    """Start ``consumer`` and run it in a thread for the duration of the block."""
    stop = threading.Event()
    consumer.start()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:
            failure.append(exc)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name="test-consumer")
    thread.start()
    try:
        yield consumer.stats
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the consumer did not stop"
    assert not failure, failure


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)  # polling interval of a bounded wait
    return True
