"""The pytest-testengine collector: ingest, Kafka forwarding, processing, query API."""

from __future__ import annotations
