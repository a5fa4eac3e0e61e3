"""Shared fixtures: a real collector process, a real Kafka broker."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.collector",
    "tests.support.kafka",
]
