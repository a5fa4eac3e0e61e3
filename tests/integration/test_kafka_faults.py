"""Faults against the real broker, each checked with exact counts.

- the broker stops in the middle of a stream of batches and comes back: every acknowledged
  result reaches the store exactly once (the write-ahead log holds and replays them);
- the write-ahead log fills up while the broker is away: 503-style SinkUnavailable, then ready
  again once replayed;
- a processor is SIGKILLed in the middle of a batch stream: its successor resumes from the
  committed offsets;
- two processors share a group and one leaves: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_server.consumer import ResultConsumer
from collector_server.kafka_admin import ensure_topic
from collector_server.sinks import SinkUnavailable
from collector_server.sinks.kafka import KafkaSink
from pytest_testengine.model import Record
from tests.support.kafka import BrokerControl, load_broker_script
from tests.support.kafka_io import consuming, produce, sample_records, wait_until
from tests.support.memory_store import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def free_port() -> int:
    port: int = load_broker_script().free_port()
    return port


def store_all(bootstrap: str, topic: str, expected: int) -> MemoryStore:
    """Consume ``topic`` with a fresh group until ``expected`` distinct results are stored."""
    store = MemoryStore()
    consumer = ResultConsumer(
        bootstrap, topic, "processors", store, batch_size=200, consumer_config=FAST_GROUP
    )
    with consuming(consumer):
        assert store.wait_for(expected, timeout=20), f"stored {len(store.ids)} of {expected}"
    return store


async def wait_replayed(sink: KafkaSink, timeout: float) -> None:
    drained = await sink.wait_drained(timeout)
    assert drained, f"write-ahead log still holds {sink.wal.depth} records"


def test_broker_stop_in_mid_stream_loses_and_doubles_nothing(
    kafka_broker: BrokerControl, kafka_topic: str, tmp_path: Path
) -> None:
    batches = [sample_records(50) for _ in range(12)]
    acknowledged: list[str] = []
    seen: dict[str, object] = {}

    async def scenario() -> None:
        sink = KafkaSink(
            kafka_broker.bootstrap,
            tmp_path / "wal",
            topic=kafka_topic,
            partitions=3,
            delivery_timeout=3.0,
        )
        await sink.start()
        try:
            for index, batch in enumerate(batches):
                if index == 4:  # the broker goes away while this batch is being produced
                    await asyncio.gather(asyncio.to_thread(kafka_broker.stop), sink.publish(batch))
                elif index == 8:
                    seen["down"] = sink.status()
                    await asyncio.to_thread(kafka_broker.start)
                    await sink.publish(batch)
                else:
                    await sink.publish(batch)
                acknowledged.extend(r.result.id for r in batch)
            await wait_replayed(sink, timeout=30)
            seen["up"] = sink.status()
            seen["replayed"] = sink.replayed
        finally:
            await sink.close()

    asyncio.run(scenario())

    down = seen["down"]
    assert isinstance(down, dict)
    assert down["kafka"]["reachable"] is False
    assert down["wal"]["depth"] >= 3 * 50  # batches 5..7 at least went to the WAL
    assert down["ready"] is True  # the WAL still accepts: 202, not 503
    up = seen["up"]
    assert isinstance(up, dict)
    assert up["kafka"]["reachable"] is True
    assert up["wal"]["depth"] == 0
    assert isinstance(seen["replayed"], int)
    assert seen["replayed"] >= 3 * 50

    store = store_all(kafka_broker.bootstrap, kafka_topic, len(acknowledged))
    assert store.ids == set(acknowledged)
    assert len(acknowledged) == 12 * 50


def test_a_full_write_ahead_log_answers_unavailable_until_replayed(
    kafka_broker: BrokerControl, kafka_topic: str, tmp_path: Path
) -> None:
    outcomes: list[str] = []

    async def scenario() -> None:
        sink = KafkaSink(
            kafka_broker.bootstrap,
            tmp_path / "wal",
            topic=kafka_topic,
            partitions=1,
            delivery_timeout=2.0,
            wal_max_bytes=60_000,
            retry_after=7.0,
        )
        await sink.start()
        try:
            await asyncio.to_thread(kafka_broker.stop)
            for _ in range(20):
                try:
                    await sink.publish(sample_records(50))
                except SinkUnavailable as exc:
                    outcomes.append(f"503 retry-after={exc.retry_after} {exc}")
                    break
                outcomes.append("202")
            status = sink.status()
            assert status["ready"] is False
            assert status["wal"]["full"] is True  # type: ignore[index]
            await asyncio.to_thread(kafka_broker.start)
            await wait_replayed(sink, timeout=30)
            assert sink.status()["ready"] is True
            await sink.publish(sample_records(10))
            outcomes.append("202")
        finally:
            await sink.close()

    asyncio.run(scenario())
    assert outcomes[0] == "202"
    refused = [o for o in outcomes if o.startswith("503")]
    assert len(refused) == 1
    assert refused[0].startswith("503 retry-after=7.0 [testengine] write-ahead log full: ")
    assert refused[0].endswith("limit 60000 bytes; it drains when Kafka accepts records again")
    assert outcomes[-1] == "202"


def test_a_sink_killed_with_acknowledged_records_in_its_wal_loses_none(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    """Kafka unreachable for a collector process, which is then SIGKILLed: the next process
    on the same write-ahead log replays every acknowledged result."""
    nowhere = f"127.0.0.1:{free_port()}"
    wal_dir = tmp_path / "wal"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sink_worker", nowhere, kafka_topic, str(wal_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 400:
            line = child.stdout.readline()
            assert line, "the sink process exited early"
            acknowledged.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()

    async def replay() -> int:
        sink = KafkaSink(kafka_bootstrap, wal_dir, topic=kafka_topic, partitions=2)
        await sink.start()
        try:
            await wait_replayed(sink, timeout=30)
            return sink.replayed
        finally:
            await sink.close()

    replayed = asyncio.run(replay())
    assert replayed >= len(acknowledged)
    store = store_all(kafka_bootstrap, kafka_topic, replayed)
    assert set(acknowledged) <= store.ids
    assert len(store.ids) == replayed  # the WAL held no entry twice
    assert replayed - len(acknowledged) <= 20  # at most the batch in flight at the kill


# -- processors


def start_worker(
    bootstrap: str, topic: str, out: Path, log: Path, *pace: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.kafka_worker",
                bootstrap,
                topic,
                "processors",
                str(out),
                *pace,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def stored_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if len(line) == 32]


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_killed_processor_resumes_from_committed_offsets(
    kafka_bootstrap: str,
    kafka_topic: str,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    records = sample_records(1500)
    produce(kafka_bootstrap, kafka_topic, records, partitions=3)
    expected = {r.result.id for r in records}
    out, log = tmp_path / "stored.txt", tmp_path / "worker.log"

    first = start_worker(kafka_bootstrap, kafka_topic, out, log, "--batch", "25", "--pause", "0.02")
    workers.append(first)
    assert wait_until(lambda: len(stored_lines(out)) >= 300, timeout=20), log.read_text()
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    before = len(stored_lines(out))
    assert before < 1500, "the processor finished before it was killed"

    second = start_worker(kafka_bootstrap, kafka_topic, out, log, "--batch", "25")
    workers.append(second)
    assert wait_until(lambda: set(stored_lines(out)) >= expected, timeout=30), log.read_text()
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, log.read_text()

    lines = stored_lines(out)
    assert set(lines) == expected
    # resumed from the committed offsets: at most the one batch in flight at the kill again
    assert len(lines) - len(expected) <= 25


def test_one_of_two_processors_leaves_and_nothing_is_lost_or_doubled(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    ensure_topic(kafka_bootstrap, kafka_topic, partitions=4)
    store = MemoryStore()
    store.pause = 0.01  # a busy database keeps both processors working for a while
    records: list[Record] = sample_records(2000)

    def member() -> ResultConsumer:
        return ResultConsumer(
            kafka_bootstrap,
            kafka_topic,
            "processors",
            store,
            batch_size=20,
            partitions=4,
            consumer_config=FAST_GROUP,
        )

    leaving, staying = member(), member()
    with consuming(staying) as kept:
        with consuming(leaving) as left:
            assert wait_until(
                lambda: (
                    len(left.assigned) + len(kept.assigned) == 4
                    and bool(left.assigned)
                    and bool(kept.assigned)
                ),
                timeout=20,
            ), (left.assigned, kept.assigned)
            produce(kafka_bootstrap, kafka_topic, records)
            assert wait_until(lambda: len(store.ids) >= 500, timeout=20)
        stored_when_left = len(store.ids)
        assert store.wait_for(2000, timeout=30), f"stored {len(store.ids)} of 2000"
        assert sorted(kept.assigned) == [0, 1, 2, 3]

    assert stored_when_left < 2000, "the stream was over before a processor left"
    assert left.records > 0
    assert kept.records > 0
    assert store.ids == {r.result.id for r in records}
    assert store.duplicates == 0
    assert left.records + kept.records == 2000
