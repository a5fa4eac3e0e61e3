"""POST /v1/plans in process over ASGITransport with the real SQLite stores."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from collector_server.app import create_app
from collector_server.auth import TokenStore
from collector_server.settings import CollectorSettings
from pytest_testengine.model import Batch, Result, RunInfo, encode_batch, new_id
from pytest_testengine.splitting import test_set_hash
from tests.collector.batches import JSON
from tests.collector.conftest import caught_up, serving

pytestmark = pytest.mark.anyio

TESTS = [f"tests/test_{f}.py::test_{i}" for f in "abcd" for i in range(10)]


def plan_body(tests: Sequence[str] = TESTS, **fields: Any) -> dict[str, Any]:
    return {"build_id": "b-1", "total": 4, "index": 0, "tests": list(tests), **fields}


def auth(token: str | None) -> dict[str, str]:
    return {**JSON, **({"Authorization": f"Bearer {token}"} if token else {})}


async def ask(client: httpx.AsyncClient, token: str | None = None, **fields: Any) -> dict[str, Any]:
    tests = fields.pop("tests", TESTS)
    response = await client.post("/v1/plans", json=plan_body(tests, **fields), headers=auth(token))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def run_info(**fields: Any) -> RunInfo:
    return RunInfo(run_id=fields.pop("run_id", new_id()), **fields)


def results(durations: dict[str, float], outcome: str = "passed") -> list[Result]:
    return [
        Result(
            id=new_id(),
            nodeid=nodeid,
            file=nodeid.partition("::")[0],
            name=nodeid.rpartition("::")[2],
            outcome=outcome,  # type: ignore[arg-type]
            duration=seconds,
            call=seconds,
            start=1_700_000_000.0,
            stop=1_700_000_000.0 + seconds,
        )
        for nodeid, seconds in durations.items()
    ]


async def report(
    client: httpx.AsyncClient,
    app: Starlette,
    durations: dict[str, float],
    *,
    token: str | None = None,
    outcome: str = "passed",
    **run: Any,
) -> None:
    """Send results (one run) and wait until the processor has stored them."""
    batch = Batch(run_info(**run), results(durations, outcome))
    response = await client.post("/v1/results", content=encode_batch(batch), headers=auth(token))
    assert response.status_code == 202, response.text
    await caught_up(app)


def assignment(plan: dict[str, Any]) -> list[list[str]]:
    return [shard["tests"] for shard in plan["shards"]]


def check_partition(plan: dict[str, Any], tests: Sequence[str]) -> None:
    assigned = [t for shard in assignment(plan) for t in shard]
    assert sorted(assigned) == sorted(tests)  # every test once, none twice
    assert [shard["index"] for shard in plan["shards"]] == list(range(plan["total"]))


async def test_four_shards_get_the_same_plan_in_any_order_and_after_new_durations(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    await report(client, app, {t: 0.1 + i / 100 for i, t in enumerate(TESTS)})
    answers = []
    for index in (2, 0, 3, 1):
        shuffled = random.Random(index).sample(TESTS, len(TESTS))
        answers.append(await ask(client, index=index, tests=shuffled))
    first = answers[0]
    assert [a["cached"] for a in answers] == [False, True, True, True]
    for other in answers[1:]:
        assert {**other, "cached": False} == first
    assert len(first["plan_id"]) == 32
    assert set(first["plan_id"]) <= set("0123456789abcdef")
    assert first["test_set_hash"] == test_set_hash(TESTS)
    assert (first["suite"], first["build_id"], first["total"], first["by"], first["mode"]) == (
        "default",
        "b-1",
        4,
        "test",
        "static",
    )
    assert first["estimate_sources"]["history"] == 40
    assert first["without_history"] == 0
    check_partition(first, TESTS)
    # shards keep the collection order of the first request that made the plan
    order = {t: i for i, t in enumerate(random.Random(2).sample(TESTS, len(TESTS)))}
    for shard in assignment(first):
        assert shard == sorted(shard, key=order.__getitem__)
    # much slower durations arrive: a late or retried shard still gets the cached plan
    await report(client, app, {t: 5.0 + i for i, t in enumerate(TESTS)})
    late = await ask(client, index=1)
    assert late["cached"] is True
    assert {**late, "cached": False} == first
    build = (await client.get("/v1/suites/default/builds/b-1")).json()
    assert build["plans"][0]["asked_by"] == [0, 1, 2, 3]


async def test_plan_follows_recorded_passing_durations(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    tests = ["t.py::slow", "t.py::a", "t.py::b", "t.py::c", "t.py::new"]
    await report(client, app, {"t.py::slow": 20.0, "t.py::a": 3.0, "t.py::b": 3.0})
    await report(client, app, {"t.py::c": 3.0, "t.py::a": 3.0, "t.py::b": 3.0})
    await report(client, app, {"t.py::c": 500.0}, outcome="failed")  # failures do not count
    plan = await ask(client, total=2, tests=tests)
    assert plan["estimate_sources"] == {
        "history": 4,
        "siblings": 0,
        "file": 1,
        "suite": 0,
        "default": 0,
    }
    assert plan["without_history"] == 1
    # slow (20) alone against a, b, c and new (3 each, new from its file's median)
    assert sorted(assignment(plan), key=len) == [
        ["t.py::slow"],
        ["t.py::a", "t.py::b", "t.py::c", "t.py::new"],
    ]
    estimated = sorted(shard["estimated"] for shard in plan["shards"])
    assert estimated == pytest.approx([12.004, 20.001])
    assert plan["estimated_total"] == pytest.approx(32.005)


async def test_different_requests_get_different_plans(client: httpx.AsyncClient) -> None:
    base = await ask(client)
    variants = [
        await ask(client, tests=TESTS[:-1]),
        await ask(client, tests=[*TESTS, "tests/test_e.py::test_0"]),
        await ask(client, build_id="b-2"),
        await ask(client, total=3),
        await ask(client, by="file"),
        await ask(client, mode="dynamic"),
        await ask(client, suite="other"),
    ]
    ids = {base["plan_id"], *(v["plan_id"] for v in variants)}
    assert len(ids) == 8
    assert not any(v["cached"] for v in variants)
    assert variants[0]["test_set_hash"] != base["test_set_hash"]
    check_partition(variants[0], TESTS[:-1])
    assert (await ask(client, index=3))["plan_id"] == base["plan_id"]


async def test_by_file_keeps_files_together(client: httpx.AsyncClient, app: Starlette) -> None:
    tests = [f"tests/test_{f}.py::test_{i}" for f in "abcdefgh" for i in range(5)]
    await report(client, app, {t: 1.0 + (ord(t[11]) % 3) for t in tests})
    plan = await ask(client, tests=tests, by="file")
    assert plan["by"] == "file"
    check_partition(plan, tests)
    file_shard = {}
    for shard in plan["shards"]:
        for test in shard["tests"]:
            assert file_shard.setdefault(test.partition("::")[0], shard["index"]) == shard["index"]
    assert len(file_shard) == 8
    assert all(shard["tests"] for shard in plan["shards"])


async def test_more_shards_than_tests_leaves_shards_empty(client: httpx.AsyncClient) -> None:
    plan = await ask(client, tests=["a.py::t"], total=3, index=2)
    assert sorted(len(tests) for tests in assignment(plan)) == [0, 0, 1]


async def test_plans_survive_a_restart(settings: CollectorSettings) -> None:
    async with serving(create_app(settings)) as client:
        made = await ask(client, index=1)
    assert (settings.data_dir / "plans.db").exists()
    async with serving(create_app(settings)) as client:
        again = await ask(client, index=2)
        build = (await client.get("/v1/suites/default/builds/b-1")).json()
    assert again["cached"] is True
    assert {**again, "cached": False} == made
    assert build["plans"][0]["asked_by"] == [1, 2]


async def test_tenants_never_share_plans(settings: CollectorSettings, tmp_path: Path) -> None:
    tokens = TokenStore(settings.data_dir)
    token_a, token_b = tokens.create("acme"), tokens.create("globex")
    async with serving(create_app(settings)) as client:
        plan_a = await ask(client, token_a, mode="dynamic")
        plan_b = await ask(client, token_b, mode="dynamic")
        assert plan_b["cached"] is False  # same request, other tenant: its own plan
        assert plan_b["plan_id"] != plan_a["plan_id"]
        path = f"/v1/plans/{plan_a['plan_id']}/next"
        stolen = await client.post(path, json={"index": 0}, headers=auth(token_b))
        assert stolen.status_code == 404
        assert stolen.json()["error"]["code"] == "plan_not_found"
        assert stolen.json()["error"]["field"] == "plan_id"
        build_b = await client.get("/v1/suites/default/builds/b-1", headers=auth(token_b))
        assert [p["plan_id"] for p in build_b.json()["plans"]] == [plan_b["plan_id"]]
        # A's queue is untouched by B's attempt: its first chunk is still free
        mine = await client.post(path, json={"index": 0}, headers=auth(token_a))
        assert mine.json()["chunk"]["id"] == 0
        assert (await client.post("/v1/plans", json=plan_body())).status_code == 401
        other_build = await client.get("/v1/suites/default/builds/b-9", headers=auth(token_b))
        assert other_build.status_code == 404
        assert other_build.json()["error"]["code"] == "build_not_found"


async def test_plan_endpoints_without_a_token_are_401_with_the_scheme(
    settings: CollectorSettings,
) -> None:
    TokenStore(settings.data_dir).create("acme")
    async with serving(create_app(settings)) as client:
        for response in (
            await client.post("/v1/plans", json=plan_body()),
            await client.post("/v1/plans/" + "0" * 32 + "/next", json={"index": 0}),
            await client.get("/v1/suites/default/builds/b-1"),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "missing_token"
