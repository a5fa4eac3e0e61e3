"""Prometheus metrics of the Kafka sink, its write-ahead log and the Kafka consumer.

Registered in the registry given (the app's own, so apps and tests do not share counters)::

    metrics = KafkaMetrics(app_metrics.registry)
    KafkaSink(..., metrics=metrics); ResultConsumer(..., metrics=metrics)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class KafkaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.produce_latency = Histogram(
            "testengine_kafka_produce_seconds",
            "time from producing a batch until Kafka acknowledged all its records (acks=all)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivered = Counter(
            "testengine_kafka_delivered_records", "records Kafka acknowledged", registry=r
        )
        self.delivery_errors = Counter(
            "testengine_kafka_delivery_errors",
            "records Kafka did not acknowledge, by librdkafka error name",
            ["error"],
            registry=r,
        )
        self.wal_appended = Counter(
            "testengine_wal_appended_records",
            "records written to the write-ahead log because Kafka could not take them",
            registry=r,
        )
        self.wal_full = Counter(
            "testengine_wal_full_rejections",
            "batches refused (503) because the write-ahead log was full",
            registry=r,
        )
        self.wal_depth = Gauge(
            "testengine_wal_depth_records", "records in the write-ahead log", registry=r
        )
        self.wal_bytes = Gauge(
            "testengine_wal_bytes", "bytes of write-ahead log segments on disk", registry=r
        )
        self.replayed = Counter(
            "testengine_wal_replayed_records",
            "records replayed from the write-ahead log to Kafka",
            registry=r,
        )
        self.consumed = Counter(
            "testengine_consumer_records", "records the consumer wrote to the store", registry=r
        )
        self.consumed_new = Counter(
            "testengine_consumer_new_results",
            "records the store kept (not duplicates of a stored result id)",
            registry=r,
        )
        self.malformed = Counter(
            "testengine_consumer_malformed_records",
            "records that could not be decoded, moved to the dead-letter topic",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "testengine_consumer_lag_records",
            "records on the topic not yet consumed, by partition",
            ["partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "testengine_consumer_rebalances",
            "partition assignments and revocations of this consumer",
            ["kind"],
            registry=r,
        )
