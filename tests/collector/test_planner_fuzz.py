"""Fuzzing the planner's endpoints: whatever the body, a JSON answer below 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from collector_server.app import create_app
from collector_server.settings import CollectorSettings
from tests.collector.conftest import serving
from tests.collector.test_fuzz import json_values

Client = tuple[BlockingPortal, httpx.AsyncClient, str]

PLAN_KEYS = ["suite", "build_id", "total", "index", "by", "mode", "tests"]
NEXT_KEYS = ["index", "completed", "holding"]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    settings_ = CollectorSettings(
        data_dir=tmp_path_factory.mktemp("plan-fuzz") / "data",
        max_body_bytes=64 * 1024,
        max_plan_tests=50,
        max_string_length=200,
    )
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(serving(create_app(settings_))) as client,
    ):
        made = portal.call(
            lambda: client.post(
                "/v1/plans",
                json={
                    "build_id": "fuzz",
                    "total": 3,
                    "index": 0,
                    "mode": "dynamic",
                    "tests": [f"t.py::test_{i}" for i in range(30)],
                },
            )
        )
        assert made.status_code == 200, made.text
        yield portal, client, made.json()["plan_id"]


def mutated(valid: dict[str, Any], keys: list[str]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        obj: Any = dict(valid)
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(keys) | st.text(max_size=8))
            if draw(st.booleans()):
                obj[key] = draw(json_values)
            else:
                obj.pop(key, None)
        return orjson.dumps(obj)

    return build()


PLAN = {"build_id": "b", "total": 2, "index": 1, "tests": ["a.py::t", "b.py::t", "b.py::u"]}
plan_bodies = st.one_of(
    st.binary(max_size=500), json_values.map(orjson.dumps), mutated(PLAN, PLAN_KEYS)
)
next_bodies = st.one_of(
    json_values.map(orjson.dumps),
    mutated({"index": 1, "completed": [0], "holding": [1]}, NEXT_KEYS),
)


def check(response: httpx.Response) -> None:
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code == 200:
        return
    error = answer["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["message"].startswith("[testengine] ")
    assert error["field"] is None or isinstance(error["field"], str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=plan_bodies)
def test_any_plan_request_gets_a_json_answer_below_500(fuzz_client: Client, content: bytes) -> None:
    portal, client, _ = fuzz_client
    headers = {"Content-Type": "application/json"}
    response = portal.call(lambda: client.post("/v1/plans", content=content, headers=headers))
    check(response)
    if response.status_code == 200:
        plan = response.json()
        assigned = sorted(t for shard in plan["shards"] for t in shard["tests"])
        assert assigned == sorted(orjson.loads(content)["tests"]) or plan["mode"] == "dynamic"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=next_bodies)
def test_any_next_request_gets_a_json_answer_below_500(fuzz_client: Client, content: bytes) -> None:
    portal, client, plan_id = fuzz_client
    headers = {"Content-Type": "application/json"}
    path = f"/v1/plans/{plan_id}/next"
    check(portal.call(lambda: client.post(path, content=content, headers=headers)))
