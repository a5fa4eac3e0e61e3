"""What the Kafka sink and the consumer share: client settings, topic creation, error names.

Blocking calls (they wait on the network); async callers run them in a thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

DEFAULT_TOPIC: Final = "testengine.results"
DEFAULT_PARTITIONS: Final = 6
DEFAULT_GROUP: Final = "testengine-processors"
DLQ_SUFFIX: Final = ".dlq"

#: librdkafka's own logs go to this logger (instead of stderr).
client_log = logging.getLogger("testengine.collector.kafka.client")


class TopicError(Exception):
    """A topic could not be created or described."""


def client_config(
    bootstrap: str,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka settings: ``defaults`` overridden by the user's ``overrides``."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": client_log}
    config.update(defaults or {})
    config.update(overrides or {})
    return config


def error_name(error: KafkaError | None) -> str:
    """A short, stable label for metrics and logs (``_MSG_TIMED_OUT``, ``NOT_ENOUGH_REPLICAS``)."""
    if error is None:
        return "unknown"
    return str(error.name())


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int = -1,
    topic_config: Mapping[str, str] | None = None,
    client_overrides: Mapping[str, Any] | None = None,
    timeout: float = 10.0,
) -> bool:
    """Create ``topic`` unless it exists; True when this call created it.

    An existing topic is left as it is (its partition count included).  ``replication_factor``
    -1 takes the broker's ``default.replication.factor``.  Raises :class:`TopicError`.
    """
    admin = AdminClient(
        client_config(bootstrap, {"socket.timeout.ms": 10000}, _admin_overrides(client_overrides))
    )
    spec = NewTopic(
        topic,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config=dict(topic_config or {}),
    )
    futures = admin.create_topics([spec], operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout=timeout + 1.0)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise TopicError(
            f"[testengine] cannot create Kafka topic {topic!r} on {bootstrap}: {exc}; check "
            "that the broker is reachable and allows topic creation, or create the topic"
        ) from exc
    except concurrent.futures.TimeoutError as exc:
        raise TopicError(
            f"[testengine] creating Kafka topic {topic!r} on {bootstrap} timed out after "
            f"{timeout:.0f} s; check that the broker is reachable"
        ) from exc
    return True


def partition_count(bootstrap: str, topic: str, *, timeout: float = 10.0) -> int:
    """How many partitions ``topic`` has (0 when it does not exist)."""
    admin = AdminClient(client_config(bootstrap))
    try:
        metadata = admin.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"[testengine] cannot describe Kafka topic {topic!r}: {exc}") from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return 0
    return len(described.partitions)


def _admin_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Producer/consumer-only keys make AdminClient refuse the config: keep the common ones."""
    common = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.", "reconnect.")
    return {k: v for k, v in (overrides or {}).items() if k.startswith(common)}
