"""Plans past their retention are deleted, with their queues; younger ones stay cached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector_server.planner import PRUNE_INTERVAL, NextRequest, Planner, PlanRequest
from collector_server.settings import CollectorSettings, resolve
from tests.collector.conftest import Clock, open_planner

DAY = 86_400.0
TESTS = [f"tests/test_a.py::test_{i}" for i in range(12)]


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def planner(tmp_path: Path, clock: Clock) -> Iterator[Planner]:
    with open_planner(CollectorSettings(data_dir=tmp_path, plan_retention=7 * DAY), clock) as made:
        yield made


def ask(planner: Planner, build: str, mode: str = "static") -> dict[str, Any]:
    request = PlanRequest("default", build, 3, 0, "test", mode, TESTS)
    answer: dict[str, Any] = orjson.loads(planner.plan("default", request))
    return answer


def test_plans_past_retention_go_with_their_queues_younger_ones_stay(
    planner: Planner, clock: Clock
) -> None:
    old_static = ask(planner, "old-1")
    old_dynamic = ask(planner, "old-2", "dynamic")
    planner.next("default", old_dynamic["plan_id"], NextRequest(0, (), ()))
    clock.now += 5 * DAY
    young = ask(planner, "young")
    clock.now += 3 * DAY  # the old plans are 8 days old, the young one 3

    assert planner.prune() == 2
    assert planner.plans.get("default", old_static["plan_id"]) is None
    assert planner.plans.get("default", old_dynamic["plan_id"]) is None
    assert planner.plans.chunks(old_dynamic["plan_id"]) == []
    assert planner.plans.build("default", "default", "old-1") == []
    again = ask(planner, "young")
    assert (again["plan_id"], again["cached"]) == (young["plan_id"], True)
    remade = ask(planner, "old-1")  # asked again after its deletion: made anew
    assert (remade["plan_id"], remade["cached"]) == (old_static["plan_id"], False)


def test_pruning_runs_at_most_once_an_interval(tmp_path: Path, clock: Clock) -> None:
    settings = CollectorSettings(data_dir=tmp_path, plan_retention=60.0)
    with open_planner(settings, clock) as planner:
        ask(planner, "b-1")
        clock.now += PRUNE_INTERVAL  # the planner pruned when it opened
        assert planner.prune() == 1
        ask(planner, "b-2")
        clock.now += 120.0
        assert planner.prune() == 0  # past retention, but pruned less than an interval ago
        clock.now += PRUNE_INTERVAL
        assert planner.prune() == 1


def test_retention_is_a_setting() -> None:
    settings = resolve({}, {"TESTENGINE_COLLECTOR_PLAN_RETENTION": "3600"})
    assert settings.plan_retention == 3600.0
    assert resolve({}, {}).plan_retention == 14 * DAY
