"""The collector app in process: ``httpx.AsyncClient`` over ``ASGITransport``, real SQLite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette

from collector_server.app import Collector, create_app
from collector_server.planner import Planner
from collector_server.settings import CollectorSettings
from collector_server.store.plans import PlanStore
from collector_server.store.sqlite import SqliteStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> CollectorSettings:
    return CollectorSettings(data_dir=tmp_path / "data")


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector.test") as c:
            yield c


@pytest.fixture
def app(settings: CollectorSettings) -> Starlette:
    return create_app(settings)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        yield c


def collector_of(app: Starlette) -> Collector:
    collector: Collector = app.state.collector
    return collector


async def caught_up(app: Starlette, timeout: float = 10.0) -> None:
    """Wait (bounded) until the processor has applied everything accepted so far."""
    processor = collector_of(app).parts.processor
    assert processor is not None
    assert await anyio.to_thread.run_sync(processor.wait_caught_up, timeout), "processor behind"


@dataclass
class Clock:
    """An injected clock the test moves by hand."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def open_planner(settings: CollectorSettings, clock: Clock) -> Iterator[Planner]:
    """A planner on real SQLite files in ``settings.data_dir``, closed afterwards."""
    store = SqliteStore(settings.data_dir / "store.db").open()
    planner = Planner(settings, PlanStore(settings.data_dir / "plans.db"), store, clock=clock)
    planner.open()
    try:
        yield planner
    finally:
        planner.close()
        store.close()


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Any]:
    """Open SQLite stores in ``tmp_path`` (by file name, clock at 1234.0), closed after."""
    opened: list[SqliteStore] = []

    def make(name: str = "store.db") -> SqliteStore:
        store = SqliteStore(tmp_path / name, clock=lambda: 1234.0).open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
