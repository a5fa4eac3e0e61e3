"""Bad input to the planner's endpoints: always a 4xx JSON error naming the field, never 5xx."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import orjson
import pytest

from collector_server.app import create_app
from collector_server.settings import CollectorSettings
from tests.collector.batches import GZIP_JSON, JSON
from tests.collector.conftest import serving
from tests.collector.test_planner import TESTS, ask, plan_body

pytestmark = pytest.mark.anyio


def without(key: str) -> dict[str, Any]:
    body = plan_body()
    del body[key]
    return body


PLAN_CASES = [
    pytest.param(
        [], 422, "invalid_type", None, "the body is an array: expected an object", id="array"
    ),
    pytest.param(
        without("build_id"),
        422,
        "missing_field",
        "build_id",
        "missing required field build_id",
        id="no-build-id",
    ),
    pytest.param(
        plan_body(build_id=""),
        422,
        "invalid_value",
        "build_id",
        "build_id is empty",
        id="empty-build-id",
    ),
    pytest.param(
        plan_body(build_id="b" * 257),
        422,
        "too_long",
        "build_id",
        "build_id is 257 characters long: expected at most 256",
        id="long-build-id",
    ),
    pytest.param(
        plan_body(build_id=12),
        422,
        "invalid_type",
        "build_id",
        "build_id is an integer: expected a string",
        id="int-build-id",
    ),
    pytest.param(
        plan_body(suite=""), 422, "invalid_value", "suite", "suite is empty", id="empty-suite"
    ),
    pytest.param(
        plan_body(suite=["x"]), 422, "invalid_type", "suite", "suite is an array", id="array-suite"
    ),
    pytest.param(
        without("total"),
        422,
        "missing_field",
        "total",
        "missing required field total: expected an integer from 1 to 1024",
        id="no-total",
    ),
    pytest.param(
        plan_body(total=0),
        422,
        "invalid_value",
        "total",
        "invalid value 0 for total: expected an integer from 1 to 1024",
        id="total-0",
    ),
    pytest.param(
        plan_body(total=1025),
        422,
        "invalid_value",
        "total",
        "expected an integer from 1 to 1024",
        id="total-1025",
    ),
    pytest.param(
        plan_body(total="4"),
        422,
        "invalid_type",
        "total",
        "total is a string: expected an integer",
        id="total-string",
    ),
    pytest.param(
        plan_body(total=4.0),
        422,
        "invalid_type",
        "total",
        "total is a number: expected an integer",
        id="total-float",
    ),
    pytest.param(
        plan_body(total=True), 422, "invalid_type", "total", "total is a boolean", id="total-bool"
    ),
    pytest.param(
        without("index"),
        422,
        "missing_field",
        "index",
        "missing required field index",
        id="no-index",
    ),
    pytest.param(
        plan_body(index=4),
        422,
        "invalid_value",
        "index",
        "expected an integer from 0 to 3 (the shard's 0-based index, below total 4)",
        id="index-is-total",
    ),
    pytest.param(
        plan_body(index=-1),
        422,
        "invalid_value",
        "index",
        "invalid value -1 for index",
        id="index-negative",
    ),
    pytest.param(
        plan_body(index=None),
        422,
        "invalid_type",
        "index",
        "index is null: expected an integer",
        id="index-null",
    ),
    pytest.param(
        plan_body(by="module"),
        422,
        "invalid_value",
        "by",
        "unknown value 'module' for by: expected 'test' or 'file'",
        id="by-module",
    ),
    pytest.param(plan_body(by=1), 422, "invalid_type", "by", "by is an integer", id="by-int"),
    pytest.param(
        plan_body(mode="fast"),
        422,
        "invalid_value",
        "mode",
        "unknown value 'fast' for mode: expected 'static' or 'dynamic'",
        id="mode-fast",
    ),
    pytest.param(
        without("tests"),
        422,
        "missing_field",
        "tests",
        "missing required field tests: expected an array of node ids",
        id="no-tests",
    ),
    pytest.param(
        plan_body(tests=[]),
        422,
        "invalid_value",
        "tests",
        "tests is empty: expected the collected node ids",
        id="empty-tests",
    ),
    pytest.param(
        {**plan_body(), "tests": "a.py::t"},
        422,
        "invalid_type",
        "tests",
        "tests is a string: expected an array of node ids",
        id="tests-string",
    ),
    pytest.param(
        plan_body(tests=["a.py::t", 3]),
        422,
        "invalid_type",
        "tests[1]",
        "tests[1] is an integer: expected a node id string",
        id="test-int",
    ),
    pytest.param(
        plan_body(tests=["a.py::t", ""]),
        422,
        "invalid_value",
        "tests[1]",
        "tests[1] is empty: expected a node id",
        id="test-empty",
    ),
    pytest.param(
        plan_body(tests=["a.py::t", "x" * 4097]),
        422,
        "too_long",
        "tests[1]",
        "tests[1] is 4097 characters long: expected at most 4096",
        id="test-long",
    ),
    pytest.param(
        plan_body(tests=["a.py::t", "b.py::t", "a.py::t"]),
        422,
        "duplicate_test",
        "tests[2]",
        "'a.py::t' is in tests more than once (again at tests[2])",
        id="duplicate",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "field", "message"), PLAN_CASES)
async def test_bad_plan_request(
    client: httpx.AsyncClient,
    body: object,
    status: int,
    code: str,
    field: str | None,
    message: str,
) -> None:
    response = await client.post("/v1/plans", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"].startswith("[testengine] ")
    assert message in error["message"]
    assert response.headers["content-type"] == "application/json"


async def test_too_many_tests(settings: CollectorSettings) -> None:
    async with serving(create_app(settings.replace(max_plan_tests=5))) as client:
        response = await client.post("/v1/plans", json=plan_body(TESTS[:6]))
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "too_many_tests",
            "field": "tests",
            "message": "[testengine] tests has 6 node ids: expected at most 5 (raise "
            "TESTENGINE_COLLECTOR_MAX_PLAN_TESTS on the collector)",
        }
        assert (await ask(client, tests=TESTS[:5]))["cached"] is False


async def test_body_limits_and_encodings(settings: CollectorSettings) -> None:
    limited = settings.replace(max_body_bytes=2000, max_decompressed_bytes=4000)
    async with serving(create_app(limited)) as client:
        big = orjson.dumps(plan_body([f"t.py::test_{i}" for i in range(200)]))
        response = await client.post("/v1/plans", content=big, headers=JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")
        bomb = gzip.compress(orjson.dumps(plan_body([f"t.py::{'x' * 50}{i}" for i in range(100)])))
        assert len(bomb) < 2000
        response = await client.post("/v1/plans", content=bomb, headers=GZIP_JSON)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "decompressed_too_large"
        small = gzip.compress(orjson.dumps(plan_body(TESTS[:4], mode="dynamic")))
        response = await client.post("/v1/plans", content=small, headers=GZIP_JSON)
        assert response.status_code == 200, response.text
        path = f"/v1/plans/{response.json()['plan_id']}/next"
        asked = gzip.compress(orjson.dumps({"index": 1}))
        response = await client.post(path, content=asked, headers=GZIP_JSON)
        assert response.json()["chunk"]["id"] == 0
        response = await client.post(path, content=b"[1, 2", headers=JSON)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_json")
        for content, headers, code in [
            (b"{nope", JSON, "invalid_json"),
            (b"\xff\xfe", JSON, "invalid_utf8"),
            (b"not gzip", GZIP_JSON, "invalid_gzip"),
            (orjson.dumps(plan_body()), {"Content-Type": "text/plain"}, "unsupported_media_type"),
            (orjson.dumps(plan_body()), {**JSON, "Content-Encoding": "br"}, "unsupported_encoding"),
        ]:
            response = await client.post("/v1/plans", content=content, headers=headers)
            assert 400 <= response.status_code < 500, (code, response.text)
            assert response.json()["error"]["code"] == code


NEXT_CASES = [
    pytest.param(
        {"index": "0"},
        422,
        "invalid_type",
        "index",
        "index is a string: expected an integer",
        id="index-string",
    ),
    pytest.param({}, 422, "missing_field", "index", "missing required field index", id="no-index"),
    pytest.param(
        {"index": 4},
        422,
        "invalid_value",
        "index",
        "invalid value 4 for index: this plan has 4 shards, expected an integer from 0 to 3",
        id="index-too-big",
    ),
    pytest.param(
        {"index": 0, "completed": 1},
        422,
        "invalid_type",
        "completed",
        "completed is an integer: expected an array of chunk ids",
        id="completed-int",
    ),
    pytest.param(
        {"index": 0, "completed": [0, "1"]},
        422,
        "invalid_type",
        "completed[1]",
        "completed[1] is a string: expected an integer chunk id",
        id="completed-string-id",
    ),
    pytest.param(
        {"index": 0, "holding": [True]},
        422,
        "invalid_type",
        "holding[0]",
        "holding[0] is a boolean",
        id="holding-bool",
    ),
    pytest.param(
        {"index": 0, "take": "no"},
        422,
        "invalid_type",
        "take",
        "take is a string: expected true or false",
        id="take-string",
    ),
    pytest.param(
        {"index": 0, "holding": [999]},
        422,
        "invalid_value",
        "holding[0]",
        "unknown chunk id 999 in holding[0]: this plan has chunks 0 to",
        id="holding-unknown",
    ),
    pytest.param(
        {"index": 0, "completed": [-1]},
        422,
        "invalid_value",
        "completed[0]",
        "unknown chunk id -1 in completed[0]",
        id="completed-negative",
    ),
    pytest.param(
        [1], 422, "invalid_type", None, "the body is an array: expected an object", id="array"
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "field", "message"), NEXT_CASES)
async def test_bad_next_request(
    client: httpx.AsyncClient,
    body: object,
    status: int,
    code: str,
    field: str | None,
    message: str,
) -> None:
    plan = await ask(client, mode="dynamic")
    response = await client.post(f"/v1/plans/{plan['plan_id']}/next", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert message in error["message"]
    # nothing was leased by a refused request
    first = await client.post(f"/v1/plans/{plan['plan_id']}/next", json={"index": 0})
    assert first.json()["chunk"]["id"] == 0


async def test_next_on_unknown_or_static_plans(client: httpx.AsyncClient) -> None:
    for plan_id in ("0" * 32, "short", "x" * 300):
        response = await client.post(f"/v1/plans/{plan_id}/next", json={"index": 0})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "plan_not_found"
        assert response.json()["error"]["field"] == "plan_id"
    static = await ask(client)
    response = await client.post(f"/v1/plans/{static['plan_id']}/next", json={"index": 0})
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "plan_not_dynamic",
        "field": "plan_id",
        "message": f"[testengine] plan {static['plan_id']} is static: its shards are in the "
        'answer of POST /v1/plans; ask with "mode": "dynamic" for a queue',
    }
    assert (await client.get("/v1/plans")).status_code == 405
    assert (await client.get("/v1/suites/default/builds/none")).status_code == 404
