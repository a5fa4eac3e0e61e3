"""Kafka fixtures: one real single-node broker for the session, a topic per test.

- ``kafka_bootstrap`` (session): ``TESTENGINE_TEST_KAFKA_BOOTSTRAP`` when set, else the bootstrap
  of a broker started by ``scripts/kafka_broker.py`` in a session temp dir.
- ``kafka_broker`` (function): the broker object of that session broker, for fault tests
  (``stop()``, ``start()`` on the same port and data, ``kill()``); it is running again after
  the test.  Started even when ``TESTENGINE_TEST_KAFKA_BOOTSTRAP`` is set, since an external
  broker cannot be stopped from here.
- ``kafka_topic`` (function): a fresh topic name; tests create it (or let the code under test).

Without Java or Maven the Kafka tests skip with the reason locally and fail under ``CI=true``:
CI is never green without having talked to a real broker.  Tests that use these fixtures get
the ``kafka`` marker (``-m "not kafka"`` deselects them).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Protocol

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka_broker.py"
ENV_BOOTSTRAP = "TESTENGINE_TEST_KAFKA_BOOTSTRAP"
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_broker"})


class BrokerControl(Protocol):
    """What the fault tests use of ``scripts/kafka_broker.py``'s ``Broker``."""

    @property
    def bootstrap(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def log_path(self) -> Path: ...

    def start(self, timeout: float = ...) -> str: ...

    def stop(self, timeout: float = ...) -> None: ...

    def kill(self) -> None: ...


def load_broker_script() -> ModuleType:
    """Import scripts/kafka_broker.py by path (scripts/ is not a package)."""
    name = "testengine_kafka_broker_script"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: Kafka tests must run in CI)", pytrace=False)
    pytest.skip(reason)


class SessionBroker:
    """Starts the broker on first use and remembers a failure so later tests fail fast."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.broker: BrokerControl | None = None
        self.error: str | None = None
        self.unavailable = False

    def get(self) -> BrokerControl:
        if self.broker is None and self.error is None:
            script = load_broker_script()
            broker: BrokerControl = script.Broker(self.data_dir)
            try:
                broker.start(timeout=90.0)
            except script.BrokerUnavailable as exc:
                self.error, self.unavailable = str(exc), True
            except script.BrokerError as exc:
                self.error = str(exc)
            else:
                self.broker = broker
        if self.broker is None:
            assert self.error is not None
            if self.unavailable:
                unavailable(self.error)
            pytest.fail(self.error, pytrace=False)
        return self.broker

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


@pytest.fixture(scope="session")
def kafka_session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBroker]:
    session = SessionBroker(tmp_path_factory.mktemp("kafka-broker"))
    yield session
    session.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_session_broker: SessionBroker) -> str:
    external = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if external:
        return external
    return kafka_session_broker.get().bootstrap


@pytest.fixture
def kafka_broker(kafka_session_broker: SessionBroker) -> Iterator[BrokerControl]:
    broker = kafka_session_broker.get()
    if not broker.running:
        broker.start()
    yield broker
    if not broker.running:
        broker.start()


@pytest.fixture
def kafka_topic() -> str:
    return f"testengine.test.{uuid.uuid4().hex[:16]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
