"""The processor as a Kafka consumer group member: from the results topic to the store.

Each round :meth:`ResultConsumer.poll_once` takes up to ``batch_size`` records, decodes them,
moves records that cannot be decoded to the dead-letter topic ``<topic>.dlq`` (with headers
naming the error and where the record came from), writes the rest to the store in one call,
and only then commits the consumed offsets (``enable.auto.commit=false``): without waiting for
the answer while it goes on with the next batch (a commit that fails is logged; the next one
of the same partitions covers its offsets, or its records come again and are deduplicated),
and waiting for it when partitions are revoked and at the end.  A
crash before a commit reached the broker redelivers its batch (at most two batches: the one
being written and the one whose commit was under way); the store deduplicates by result id,
so the data is exactly-once.  When the store write or the dead-letter produce fails, nothing is
committed: the consumer seeks back to the first record of the batch and retries after a pause.

Rebalances: offsets processed but not committed are committed when partitions are revoked
(and dropped when they are lost); every rebalance callback runs inside ``consume()``, between
two batches, so a revoked partition never has a batch half-written.

Errors::

    ConsumerError   the consumer cannot go on (a fatal librdkafka error)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from collector_server.kafka_admin import (
    DEFAULT_PARTITIONS,
    DLQ_SUFFIX,
    TopicError,
    client_config,
    ensure_topic,
    error_name,
)
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.settings import CollectorSettings
from collector_server.store.rows import RowWriter, rows_of_values
from pytest_testengine.model import OUTCOMES, Record, decode_record

log = logging.getLogger("testengine.collector.consumer")

MAX_BACKOFF: Final = 10.0
MIN_POLL: Final = 0.05  # seconds: the shortest wait for records (no busy loop when idle)
DLQ_TIMEOUT: Final = 10.0
ERROR_HEADER: Final = "testengine.error"
SOURCE_HEADERS: Final = (
    "testengine.source.topic",
    "testengine.source.partition",
    "testengine.source.offset",
)


class ResultWriter(Protocol):
    """The part of :class:`~collector_server.store.Store` the consumer uses."""

    def write(self, records: Sequence[Record]) -> int:
        """Store records in one transaction (idempotent by result id); how many were new."""


class ConsumerError(Exception):
    """The consumer cannot go on."""


@dataclass(slots=True)
class ConsumerStats:
    """What one consumer did (mutable counters, read by tests and the CLI)."""

    batches: int = 0
    records: int = 0
    new: int = 0
    malformed: int = 0
    commits: int = 0
    commit_failures: int = 0  # answered with an error (their records come again)
    retries: int = 0
    assigned: list[int] = field(default_factory=list)  # partitions held now
    lag: dict[int, int] = field(default_factory=dict)  # records not yet consumed, by partition

    def summary(self) -> str:
        failed = f" ({self.commit_failures} failed)" if self.commit_failures else ""
        return (
            f"{self.records} records consumed ({self.new} new), {self.malformed} malformed, "
            f"{self.commits} commits{failed}"
        )


def check_record(record: Record) -> str | None:
    """Why a decoded record cannot be stored, or None (types the decoder does not check)."""
    result, run = record.result, record.run
    if not record.tenant:
        return "tenant is empty"
    if not isinstance(result.id, str) or not result.id:
        return "result.id must be a non-empty string"
    if not isinstance(result.nodeid, str) or not result.nodeid:
        return "result.nodeid must be a non-empty string"
    if not isinstance(result.outcome, str) or result.outcome not in OUTCOMES:
        return f"result.outcome {result.outcome!r} is not one of {sorted(OUTCOMES)}"
    for name in ("setup", "call", "teardown", "duration", "start", "stop"):
        value = getattr(result, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"result.{name} must be a number, not {type(value).__name__}"
    if not isinstance(run.run_id, str) or not run.run_id:
        return "run.run_id must be a non-empty string"
    if not isinstance(run.suite, str) or not run.suite:
        return "run.suite must be a non-empty string"
    return None


def decode_message(value: bytes | None) -> tuple[Record | None, str | None]:
    """(record, None) for a good value, (None, reason) for a malformed one."""
    if value is None:
        return None, "the record has no value"
    try:
        record = decode_record(value)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    problem = check_record(record)
    return (None, problem) if problem else (record, None)


class ResultConsumer:
    """One member of the processor consumer group.  Not thread-safe: one thread drives it."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        store: ResultWriter,
        *,
        batch_size: int = 500,
        poll_timeout: float = 1.0,
        partitions: int = DEFAULT_PARTITIONS,
        dlq_topic: str | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        metrics: KafkaMetrics | None = None,
        on_applied: Callable[[int, int], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.store = store
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.partitions = partitions
        self.dlq_topic = dlq_topic or topic + DLQ_SUFFIX
        self.consumer_config = dict(consumer_config or {})
        self.metrics = metrics
        self.on_applied = on_applied
        self.stats = ConsumerStats()
        self._consumer: Consumer | None = None
        self._dlq: Producer | None = None
        self._dlq_ready = False
        self._pending: dict[tuple[str, int], int] = {}  # stored, not yet committed: next offsets
        self._unanswered = 0  # commits sent without waiting, not answered yet
        self._backoff = 0.5
        self._stop = threading.Event()

    # -- lifecycle

    def start(self) -> None:
        """Create the topics if absent (best effort), join the group."""
        for name, count in ((self.topic, self.partitions), (self.dlq_topic, 1)):
            try:
                ensure_topic(self.bootstrap, name, partitions=count, timeout=10.0)
            except TopicError as exc:
                log.warning("%s; the consumer waits for it", exc)
            else:
                self._dlq_ready = self._dlq_ready or name == self.dlq_topic
        config = client_config(
            self.bootstrap,
            {
                "group.id": self.group,
                "client.id": "testengine-processor",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "error_cb": self._on_error,
                "on_commit": self._on_commit,
            },
            self.consumer_config,
        )
        self._consumer = Consumer(config)
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def close(self) -> None:
        """Commit what is stored, leave the group (a rebalance hands our partitions over)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._commit(consumer)
            consumer.close()
        dlq, self._dlq = self._dlq, None
        if dlq is not None:
            dlq.flush(DLQ_TIMEOUT)

    def run(self, stop: threading.Event, *, max_rounds: int | None = None) -> ConsumerStats:
        """Consume until ``stop`` is set (or ``max_rounds`` polls were made)."""
        self._stop = stop
        rounds = 0
        while not stop.is_set() and (max_rounds is None or rounds < max_rounds):
            self.poll_once()
            rounds += 1
        return self.stats

    # -- one round

    def poll_once(self) -> int:
        """Consume, store and commit one batch; the number of records handled."""
        consumer = self._require()
        messages = consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout)
        batch: list[Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                batch.append(message)
            elif error.fatal():
                raise ConsumerError(f"[testengine] fatal Kafka consumer error: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("[testengine] Kafka consumer error: %s", error.str())
        if not batch:
            if isinstance(self.store, RowWriter):
                self._merge_statistics()
            return 0
        try:
            self._apply(batch, more=len(messages) == self.batch_size)
        except Exception as exc:  # the store or the dead-letter topic failed: retry the batch
            self.stats.retries += 1
            log.warning(
                "[testengine] could not store %d records from %s (%s: %s); retrying in %.1f s",
                len(batch),
                self.topic,
                type(exc).__name__,
                exc,
                self._backoff,
            )
            self._rewind(consumer, batch)
            self._stop.wait(self._backoff)  # pause before the retry; a stop cuts it short
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            return 0
        self._backoff = 0.5
        self._commit(consumer, wait=False)
        self._update_lag(consumer)
        return len(batch)

    def _merge_statistics(self) -> None:
        """Idle: merge the test statistics that wait (see ``PendingTests``); a failure is
        logged and the next idle poll tries again (they wait in the store meanwhile)."""
        assert isinstance(self.store, RowWriter)
        try:
            self.store.flush_statistics()
        except Exception as exc:
            log.warning(
                "[testengine] could not merge waiting test statistics (%s: %s); retrying at"
                " the next idle poll",
                type(exc).__name__,
                exc,
            )

    def _apply(self, batch: Sequence[Message], *, more: bool = False) -> None:
        """Store ``batch``; with ``more`` (a full batch: more is likely waiting), test
        statistics may wait for a later batch, five seconds at most."""
        records: list[Record] = []
        dead: list[tuple[Message, str]] = []
        store = self.store
        if isinstance(store, RowWriter):  # no Record per message: rows straight from the JSON
            groups, problems = rows_of_values([m.value() for m in batch], decode_message)
            dead = [(batch[i], problem) for i, problem in problems]
            stored = len(batch) - len(dead)
        else:
            for message in batch:
                record, problem = decode_message(message.value())
                if record is not None:
                    records.append(record)
                else:
                    dead.append((message, problem or "malformed"))
            stored = len(records)
        if dead:
            self._dead_letter(dead)
        if not stored:
            new = 0
        elif isinstance(store, RowWriter):
            new = store.write_rows(groups, defer_statistics=more)
        else:
            new = store.write(records)
        for message in batch:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                self._pending[(topic, partition)] = offset + 1
        self.stats.batches += 1
        self.stats.records += stored
        self.stats.new += new
        self.stats.malformed += len(dead)
        if self.metrics:
            self.metrics.consumed.inc(stored)
            self.metrics.consumed_new.inc(new)
            self.metrics.malformed.inc(len(dead))
        if self.on_applied:
            self.on_applied(stored, new)

    def _rewind(self, consumer: Consumer, batch: Sequence[Message]) -> None:
        first: dict[tuple[str, int], int] = {}
        for message in batch:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                first.setdefault((topic, partition), offset)
        for (topic, partition), offset in first.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # no longer assigned: its new owner starts there
                log.debug("seek %s[%d] failed: %s", topic, partition, exc)

    # -- dead letters

    def _dead_letter(self, dead: Sequence[tuple[Message, str]]) -> None:
        if not self._dlq_ready:
            ensure_topic(self.bootstrap, self.dlq_topic, partitions=1, timeout=10.0)
            self._dlq_ready = True
        if self._dlq is None:
            self._dlq = Producer(
                client_config(
                    self.bootstrap,
                    {
                        "client.id": "testengine-processor-dlq",
                        "enable.idempotence": True,
                        "acks": "all",
                    },
                    _producer_overrides(self.consumer_config),
                )
            )
        failures: list[str] = []

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error_name(error))

        for message, problem in dead:
            log.warning(
                "[testengine] malformed record at %s[%s]@%s moved to %s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                self.dlq_topic,
                problem,
            )
            original = message.headers() or []
            headers: list[tuple[str, str | bytes | None]] = list(
                original.items() if isinstance(original, dict) else original
            )
            headers.append((ERROR_HEADER, problem.encode()[:1000]))
            source = (message.topic(), message.partition(), message.offset())
            headers.extend(
                (name, str(value).encode())
                for name, value in zip(SOURCE_HEADERS, source, strict=True)
            )
            self._dlq.produce(
                self.dlq_topic,
                value=message.value(),
                key=message.key(),
                headers=headers,
                on_delivery=report,
            )
        left = self._dlq.flush(DLQ_TIMEOUT)
        if left or failures:
            raise ConsumerError(
                f"[testengine] dead-letter topic {self.dlq_topic!r} did not acknowledge "
                f"{left + len(failures)} records ({', '.join(sorted(set(failures))) or 'timeout'})"
            )

    # -- offsets and rebalances

    def _commit(
        self, consumer: Consumer, only: set[tuple[str, int]] | None = None, *, wait: bool = True
    ) -> None:
        """Commit the offsets stored and not committed yet (``only`` of these partitions);
        ``wait=False``: send the commit and go on (its answer comes to :meth:`_on_commit`),
        unless the one sent before has no answer yet: then wait for both, so that at most one
        batch is stored with its commit under way besides the one being written."""
        offsets = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self._pending.items()
            if only is None or (topic, partition) in only
        ]
        if not offsets:
            return
        try:
            if wait or self._unanswered:
                consumer.commit(offsets=offsets, asynchronous=False)
                self._unanswered = 0  # answered in order: every commit before this one too
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
                self._unanswered += 1
        except KafkaException as exc:  # a rebalance in progress: the next owner redelivers
            self._commit_failed(str(exc))
            return
        for tp in offsets:
            self._pending.pop((tp.topic, tp.partition), None)
        self.stats.commits += 1

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.assigned = sorted({*self.stats.assigned, *(p.partition for p in partitions)})
        log.info(
            "[testengine] consumer %s assigned %s[%s]",
            self.group,
            self.topic,
            ",".join(str(p.partition) for p in partitions),
        )
        if self.metrics:
            self.metrics.rebalances.labels("assigned").inc()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self._commit(consumer, only=revoked)
        self._forget(revoked)
        if self.metrics:
            self.metrics.rebalances.labels("revoked").inc()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        log.warning("[testengine] consumer %s lost partitions %s", self.group, sorted(lost))
        self._forget(lost)
        if self.metrics:
            self.metrics.rebalances.labels("lost").inc()

    def _forget(self, partitions: set[tuple[str, int]]) -> None:
        for key in partitions:
            self._pending.pop(key, None)
        gone = {p for _, p in partitions}
        self.stats.assigned = [p for p in self.stats.assigned if p not in gone]
        self.stats.lag = {p: n for p, n in self.stats.lag.items() if p not in gone}

    def _update_lag(self, consumer: Consumer) -> None:
        lag: dict[int, int] = {}
        for tp in consumer.position(consumer.assignment()):
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                lag[tp.partition] = high - tp.offset
                if self.metrics:
                    self.metrics.consumer_lag.labels(str(tp.partition)).set(high - tp.offset)
        self.stats.lag = lag  # replaced, not changed: other threads read it

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The answer to a commit (called from ``consume()`` or ``commit()``): the error of
        the whole commit, or of some of its partitions."""
        self._unanswered = max(0, self._unanswered - 1)
        failed = [f"{tp.topic}[{tp.partition}]: {tp.error.str()}" for tp in partitions if tp.error]
        if error is not None or failed:
            self._commit_failed(error.str() if error is not None else "; ".join(failed))

    def _commit_failed(self, why: str) -> None:
        self.stats.commit_failures += 1
        log.warning(
            "[testengine] offset commit failed (%s); those records will be delivered again "
            "and deduplicated by the store",
            why,
        )

    def _on_error(self, error: KafkaError) -> None:
        log.debug("Kafka consumer client error: %s", error.str())

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise ConsumerError("[testengine] the consumer is not started (call start() first)")
        return self._consumer


def _producer_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    common = ("security.", "sasl.", "ssl.", "socket.", "broker.", "reconnect.")
    return {k: v for k, v in config.items() if k.startswith(common)}


def processor_consumer(
    settings: CollectorSettings,
    store: ResultWriter,
    *,
    metrics: KafkaMetrics | None = None,
    on_applied: Callable[[int, int], None] | None = None,
) -> ResultConsumer:
    """The consumer of ``testengine-collector process`` (and of ``serve`` in Kafka mode):
    batches of up to ``processor_batch`` records, gathered for up to ``processor_linger`` s."""
    if not settings.kafka_bootstrap:
        raise ValueError("processor_consumer() needs settings.kafka_bootstrap")
    return ResultConsumer(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        settings.kafka_group,
        store,
        batch_size=settings.processor_batch,
        poll_timeout=max(settings.processor_linger, MIN_POLL),
        partitions=settings.kafka_partitions,
        consumer_config=dict(settings.kafka_option),
        metrics=metrics,
        on_applied=on_applied,
    )
