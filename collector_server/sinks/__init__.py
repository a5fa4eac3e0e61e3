"""Sinks: where accepted batches go before the collector answers 202.

A sink returns from :meth:`Sink.publish` only once the records are durable (fsynced to the
embedded local log, or acknowledged by Kafka with ``acks=all``, or fsynced to the WAL when
Kafka cannot take them).  When it cannot make them durable it raises
:class:`SinkUnavailable`, which the app answers with 503 and ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pytest_testengine.model import Record


class SinkUnavailable(Exception):
    """The sink cannot make records durable now; the client should retry later."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(Protocol):
    async def start(self) -> None: ...

    async def publish(self, records: Sequence[Record]) -> None:
        """Return once every record is durable; raise SinkUnavailable otherwise."""

    async def close(self) -> None: ...

    def status(self) -> dict[str, object]:
        """State for /readyz (must include a boolean ``ready``)."""
