"""The Kafka sink: every accepted result becomes one Kafka record, acknowledged with acks=all.

One record per result, in the format of :mod:`collector_server.kafka_records`.

:meth:`KafkaSink.publish` produces every record of the batch with a delivery callback and
returns once Kafka acknowledged all of them.  Records Kafka could not take (broker down,
timeouts) go to the write-ahead log (fsynced) and ``publish`` returns all the same: the batch
is durable.  While the WAL holds records, new batches go to the WAL too (so the replay keeps
their order) and a background task replays the WAL to Kafka, chunk by chunk, in order.  When
the WAL passes its size limit ``publish`` raises :class:`SinkUnavailable` (503 + Retry-After).

Threads: librdkafka serves delivery callbacks from ``poll()``, which a daemon thread calls in a
loop; a callback hands its result to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from collector_server.kafka_admin import (
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    TopicError,
    client_config,
    ensure_topic,
    error_name,
)
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.kafka_records import Outgoing, headers_of, outgoing_of, outgoing_of_checked
from collector_server.settings import CollectorSettings
from collector_server.sinks import SinkUnavailable
from collector_server.sinks.wal import WalError, WalFull, WriteAheadLog
from pytest_testengine.model import (
    Record,
    RunInfo,
)

log = logging.getLogger("testengine.collector.kafka")

POLL_INTERVAL: Final = 0.1
MAX_BACKOFF: Final = 10.0
WAL_DIR: Final = "wal"  # in the collector's data directory
DEFAULT_DELIVERY_TIMEOUT: Final = 5.0


class _Delivery:
    """Delivery reports of one batch; resolves ``future`` with the failed records and the
    error of each.  Reports come from the poll thread, give-ups from the event loop: the shared
    counter (``itertools.count``, atomic under the GIL) lets exactly one of them resolve."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[list[tuple[Outgoing, str]]] = loop.create_future()
        self._loop = loop
        self._last = size - 1
        self._settled = itertools.count()
        self._failed: list[tuple[Outgoing, str]] = []
        if size == 0:
            self.future.set_result([])

    def report(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback (in the poll thread), one call per record."""
        if error is not None:
            self._failed.append((Outgoing.from_message(message), error_name(error)))
        if next(self._settled) == self._last:
            self._loop.call_soon_threadsafe(_resolve, self.future, self._failed)

    def give_up(self, items: Sequence[Outgoing], reason: str) -> None:
        self._failed.extend((item, reason) for item in items)
        for _ in items:
            if next(self._settled) == self._last:
                self._loop.call_soon_threadsafe(_resolve, self.future, self._failed)


def _resolve(
    future: asyncio.Future[list[tuple[Outgoing, str]]], value: list[tuple[Outgoing, str]]
) -> None:
    if not future.done():
        future.set_result(value)


class KafkaSink:
    """Publishes records to Kafka; falls back to a write-ahead log while Kafka cannot take them."""

    def __init__(
        self,
        bootstrap: str,
        wal_dir: Path,
        *,
        topic: str = DEFAULT_TOPIC,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = -1,
        producer_config: Mapping[str, Any] | None = None,
        delivery_timeout: float = 5.0,
        wal_max_bytes: int = 1 << 30,
        retry_after: float = 5.0,
        replay_chunk: int = 1000,
        metrics: KafkaMetrics | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.producer_config = dict(producer_config or {})
        self.delivery_timeout = delivery_timeout
        self.retry_after = retry_after
        self.replay_chunk = replay_chunk
        self.metrics = metrics
        self.wal = WriteAheadLog(Path(wal_dir), max_bytes=wal_max_bytes)
        self.reachable = False
        self.last_error: str | None = None
        self.replayed = 0
        self._wal_full = False
        self._topic_ready = False
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._wake: asyncio.Event | None = None
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()
        self._fatal = False
        self._replayer: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self.wal.open)
        self._producer = self._new_producer()
        self._stop_polling.clear()
        self._poller = threading.Thread(
            target=self._poll_loop, name="testengine-kafka-poll", daemon=True
        )
        self._poller.start()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        await self._ensure_topic()
        self._update_wal_gauges()
        if self.wal.depth:
            log.info(
                "[testengine] write-ahead log %s holds %d records from an earlier run; "
                "replaying them to Kafka",
                self.wal.directory,
                self.wal.depth,
            )
        self._replayer = asyncio.create_task(self._replay_loop(), name="testengine-wal-replay")

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        if self._wake is not None:
            self._wake.set()
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        self._stop_polling.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5.0)
            self._poller = None
        producer, self._producer = self._producer, None
        if producer is not None:
            left = await asyncio.to_thread(producer.flush, self.delivery_timeout)
            if left:
                log.warning(
                    "[testengine] %d records were still unacknowledged when the Kafka sink "
                    "closed; their batches are in the write-ahead log or were not answered 202",
                    left,
                )
            closer = getattr(producer, "close", None)  # confluent-kafka >= 2.10
            if closer is not None:
                await asyncio.to_thread(closer)
        await asyncio.to_thread(self.wal.close)

    async def wait_drained(self, timeout: float) -> bool:
        """Wait until the WAL is empty and its replay bookkept; False after ``timeout`` s."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def status(self) -> dict[str, object]:
        depth = self.wal.depth
        full = self._wal_full and depth > 0
        return {
            "ready": self._producer is not None and not full,
            "kafka": {
                "bootstrap": self.bootstrap,
                "topic": self.topic,
                "connected": self.reachable,
                "error": self.last_error,
            },
            "wal": {
                "depth": depth,
                "bytes": self.wal.size,
                "limit_bytes": self.wal.max_bytes,
                "full": full,
                "replayed": self.replayed,
            },
        }

    # -- publish

    async def publish(self, records: Sequence[Record]) -> None:
        if records:
            await self._publish(outgoing_of(records))

    async def publish_checked(
        self, tenant: str, run: RunInfo, results: Sequence[Mapping[str, Any]]
    ) -> None:
        """Publish a checked batch's results (parsed dicts with exactly Result's fields)."""
        if results:
            await self._publish(outgoing_of_checked(tenant, run, results))

    async def _publish(self, outgoing: list[Outgoing]) -> None:
        if self._producer is None:
            raise SinkUnavailable("[testengine] the Kafka sink is not started", retry_after=1.0)
        if self.wal.depth or not self.reachable:
            await self._to_wal(outgoing)
            return
        failed = await self._deliver(outgoing)
        if failed:
            await self._to_wal([item for item, _ in failed])

    async def _to_wal(self, outgoing: Sequence[Outgoing]) -> None:
        self._drained.clear()
        try:
            await asyncio.to_thread(self.wal.append, [o.to_entry() for o in outgoing])
        except WalFull as exc:
            self._wal_full = True
            if self.metrics:
                self.metrics.wal_full.inc()
            raise SinkUnavailable(str(exc), retry_after=self.retry_after) from exc
        except WalError as exc:
            raise SinkUnavailable(str(exc), retry_after=self.retry_after) from exc
        if self.metrics:
            self.metrics.wal_appended.inc(len(outgoing))
        self._update_wal_gauges()
        if self._wake is not None:
            self._wake.set()

    async def _deliver(self, outgoing: Sequence[Outgoing]) -> list[tuple[Outgoing, str]]:
        """Produce and wait for every delivery report; the failed records with their error."""
        producer = self._producer
        delivery = _Delivery(len(outgoing), asyncio.get_running_loop())
        began = time.monotonic()
        if producer is None:
            delivery.give_up(outgoing, "closed")
        else:
            produce, topic, report = producer.produce, self.topic, delivery.report
            index = 0
            try:
                for index, (tenant, key, value) in enumerate(outgoing):  # noqa: B007
                    produce(topic, value, key, headers=headers_of(tenant), on_delivery=report)
            except BufferError:
                delivery.give_up(outgoing[index:], "_QUEUE_FULL")
            except KafkaException as exc:
                delivery.give_up(outgoing[index:], error_name(exc.args[0] if exc.args else None))
        try:
            failed = await asyncio.wait_for(
                asyncio.shield(delivery.future), self.delivery_timeout + 5.0
            )
        except asyncio.TimeoutError:
            failed = [(item, "_WAIT_TIMED_OUT") for item in outgoing]
        self._account(len(outgoing), failed, time.monotonic() - began)
        return failed

    def _account(self, total: int, failed: list[tuple[Outgoing, str]], seconds: float) -> None:
        if failed:
            first = failed[0][1]
            if self.reachable or self.last_error != first:
                log.warning(
                    "[testengine] Kafka did not acknowledge %d of %d records (%s); they go to "
                    "the write-ahead log %s",
                    len(failed),
                    total,
                    first,
                    self.wal.directory,
                )
            self.reachable = False
            self.last_error = first
        else:
            if not self.reachable:
                log.info("[testengine] Kafka at %s acknowledges records again", self.bootstrap)
            self.reachable = True
            self.last_error = None
        if self.metrics:
            if not failed:
                self.metrics.produce_latency.observe(seconds)
            self.metrics.delivered.inc(total - len(failed))
            for _, name in failed:
                self.metrics.delivery_errors.labels(name).inc()

    # -- replay

    async def _replay_loop(self) -> None:
        backoff = 0.5
        assert self._wake is not None
        while not self._closing:
            if not self.wal.depth:
                self._drained.set()
                self._wake.clear()
                if not self.wal.depth:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                if not self.reachable and not self.wal.depth:
                    await self._probe()
                continue
            if self._fatal:
                await self._replace_producer()
            if await self._replay_chunk():
                backoff = 0.5
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed.wait(), backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _replay_chunk(self) -> bool:
        """Replay one chunk from the WAL head; True when it was delivered and dropped."""
        if not self.reachable and not await self._probe():
            return False
        if not self._topic_ready and not await self._ensure_topic():
            return False
        chunk = await asyncio.to_thread(self.wal.read, self.replay_chunk)
        if not chunk.entries:
            return True
        failed = await self._deliver([Outgoing.from_entry(e) for e in chunk.entries])
        if failed:
            return False
        await asyncio.to_thread(self.wal.commit, chunk)
        self.replayed += len(chunk.entries)
        self._wal_full = False
        if self.metrics:
            self.metrics.replayed.inc(len(chunk.entries))
        self._update_wal_gauges()
        if not self.wal.depth:
            log.info(
                "[testengine] write-ahead log replayed to Kafka (%d records so far)", self.replayed
            )
        return True

    async def _probe(self) -> bool:
        """Ask the broker for the topic's metadata; True (and reachable) when it answers."""
        producer = self._producer
        if producer is None:
            return False
        try:
            await asyncio.to_thread(producer.list_topics, self.topic, 2.0)
        except KafkaException as exc:
            self.last_error = error_name(exc.args[0] if exc.args else None)
            return False
        self.reachable = True
        return True

    async def _ensure_topic(self) -> bool:
        try:
            await asyncio.to_thread(
                ensure_topic,
                self.bootstrap,
                self.topic,
                partitions=self.partitions,
                replication_factor=self.replication_factor,
                client_overrides=self.producer_config,
                timeout=min(self.delivery_timeout, 10.0),
            )
        except TopicError as exc:
            log.warning("%s; records go to the write-ahead log until it is reachable", exc)
            self.reachable = False
            self.last_error = str(exc)
            return False
        self._topic_ready = True
        self.reachable = True
        return True

    # -- producer

    def _new_producer(self) -> Producer:
        config = client_config(
            self.bootstrap,
            {
                "client.id": "testengine-collector",
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",  # zstd: smaller, but 60% more CPU in librdkafka
                "linger.ms": 1,  # a request produces all its records at once: 1 ms gathers them
                "message.timeout.ms": int(self.delivery_timeout * 1000),
                "reconnect.backoff.max.ms": 2000,
                "error_cb": self._on_error,
            },
            self.producer_config,
        )
        return Producer(config)

    async def _replace_producer(self) -> None:
        old, self._producer = self._producer, self._new_producer()
        self._fatal = False
        if old is not None:
            await asyncio.to_thread(old.purge)
            await asyncio.to_thread(old.flush, 1.0)

    def _poll_loop(self) -> None:
        while not self._stop_polling.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(POLL_INTERVAL)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (called from the poll thread)."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.reachable = False
            self.last_error = error_name(error)
        if error.fatal():
            self._fatal = True
            self.reachable = False
            self.last_error = error_name(error)
            log.error(
                "[testengine] fatal Kafka producer error: %s; the producer is replaced and "
                "unacknowledged records go to the write-ahead log",
                error.str(),
            )
        else:
            log.debug("Kafka client error: %s", error.str())

    def _update_wal_gauges(self) -> None:
        if self.metrics:
            self.metrics.wal_depth.set(self.wal.depth)
            self.metrics.wal_bytes.set(self.wal.size)


def delivery_timeout(options: Mapping[str, str]) -> float:
    """Seconds to wait for Kafka's acknowledgement: librdkafka's ``message.timeout.ms`` when
    the user passes one, else 5 s."""
    given = options.get("message.timeout.ms")
    try:
        return int(given) / 1000 if given else DEFAULT_DELIVERY_TIMEOUT
    except ValueError:
        return DEFAULT_DELIVERY_TIMEOUT  # librdkafka itself reports the bad value


def kafka_sink(settings: CollectorSettings, metrics: KafkaMetrics | None = None) -> KafkaSink:
    """The Kafka sink of ``serve --kafka-bootstrap``: WAL in ``<data dir>/wal``."""
    if not settings.kafka_bootstrap:
        raise ValueError("kafka_sink() needs settings.kafka_bootstrap")
    options = dict(settings.kafka_option)
    return KafkaSink(
        settings.kafka_bootstrap,
        settings.data_dir / WAL_DIR,
        topic=settings.kafka_topic,
        partitions=settings.kafka_partitions,
        producer_config=options,
        delivery_timeout=delivery_timeout(options),
        wal_max_bytes=settings.wal_max_bytes,
        retry_after=settings.retry_after,
        metrics=metrics,
    )
