"""Prometheus metrics of one collector app (its own registry, so apps in one process and tests
do not share counters).  Served as text at ``GET /metrics``, with the standard ``process_*``,
``python_info`` and ``python_gc_*`` metrics of the serving process that prometheus_client's
default registry has."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # CPU, memory, open files of this process (Linux)
        PlatformCollector(registry=r)
        GCCollector(registry=r)  # collections per generation: see processor.settle_gc
        self.requests = Counter(
            "testengine_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "testengine_http_request_duration_seconds",
            "time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.results_accepted = Counter(
            "testengine_results_accepted", "results accepted (durable, answered 202)", registry=r
        )
        self.results_rejected = Counter(
            "testengine_results_rejected",
            "results in batches refused, by error code",
            ["code"],
            registry=r,
        )
        self.batches_rejected = Counter(
            "testengine_batches_rejected", "batches refused, by error code", ["code"], registry=r
        )
        self.batch_size = Histogram(
            "testengine_batch_size_results",
            "results per accepted batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.processed = Counter(
            "testengine_processor_records", "records the processor applied to the store", registry=r
        )
        self.stored = Counter(
            "testengine_processor_new_results",
            "records the store kept (not duplicates of a stored result id)",
            registry=r,
        )
        self.lag = Gauge(
            "testengine_processor_lag_entries",
            "log entries accepted but not yet applied to the store",
            registry=r,
        )

    def on_applied(self, records: int, new: int) -> None:
        self.processed.inc(records)
        self.stored.inc(new)

    def watch_lag(self, lag: Callable[[], float]) -> None:
        self.lag.set_function(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)
