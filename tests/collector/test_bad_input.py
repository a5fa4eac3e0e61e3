"""Bad input to POST /v1/results: always a clear 4xx JSON error naming the field, never 5xx."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from collector_server.app import create_app
from collector_server.settings import CollectorSettings
from tests.collector.batches import GZIP_JSON, JSON, batch, body, encode, gzip_bomb
from tests.collector.conftest import collector_of, serving

pytestmark = pytest.mark.anyio

Mutate = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutate:
    """Set a value at a dotted path like ``results.1.duration`` in a batch object."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str) -> Mutate:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[last]

    return mutate


FIELD_CASES = [
    pytest.param(_delete("schema"), "missing_field", "schema", id="missing-schema"),
    pytest.param(_set("schema", 2), "unsupported_schema", "schema", id="schema-2"),
    pytest.param(_set("schema", "1"), "unsupported_schema", "schema", id="schema-string"),
    pytest.param(_delete("run"), "missing_field", "run", id="missing-run"),
    pytest.param(_set("run", []), "invalid_type", "run", id="run-array"),
    pytest.param(_delete("run.run_id"), "missing_field", "run.run_id", id="missing-run-id"),
    pytest.param(_set("run.run_id", 12), "invalid_type", "run.run_id", id="run-id-int"),
    pytest.param(_delete("results"), "missing_field", "results", id="missing-results"),
    pytest.param(_set("results", {}), "invalid_type", "results", id="results-object"),
    pytest.param(_set("results.1", "x"), "invalid_type", "results[1]", id="result-string"),
    pytest.param(
        _delete("results.0.nodeid"), "missing_field", "results[0].nodeid", id="missing-nodeid"
    ),
    pytest.param(_delete("results.2.id"), "missing_field", "results[2].id", id="missing-id"),
    pytest.param(_set("results.0.id", ""), "invalid_value", "results[0].id", id="empty-id"),
    pytest.param(
        _delete("results.0.outcome"), "missing_field", "results[0].outcome", id="missing-outcome"
    ),
    pytest.param(
        _set("results.1.duration", "fast"),
        "invalid_type",
        "results[1].duration",
        id="duration-string",
    ),
    pytest.param(_set("results.1.line", "3"), "invalid_type", "results[1].line", id="line-str"),
    pytest.param(_set("results.1.line", -1), "invalid_value", "results[1].line", id="line-neg"),
    pytest.param(
        _set("results.0.attempt", True), "invalid_type", "results[0].attempt", id="attempt-bool"
    ),
    pytest.param(
        _set("results.0.attempt", 0), "invalid_value", "results[0].attempt", id="attempt-zero"
    ),
    pytest.param(
        _set("results.0.setup", -0.1), "invalid_value", "results[0].setup", id="negative-setup"
    ),
    pytest.param(
        _set("results.2.duration", -5), "invalid_value", "results[2].duration", id="negative-dur"
    ),
    pytest.param(
        _set("results.0.outcome", "exploded"),
        "invalid_value",
        "results[0].outcome",
        id="unknown-outcome",
    ),
    pytest.param(
        _set("results.0.outcome", ["passed"]),
        "invalid_type",
        "results[0].outcome",
        id="outcome-array",
    ),
    pytest.param(
        _set("results.0.when", "lunch"), "invalid_value", "results[0].when", id="unknown-phase"
    ),
    pytest.param(
        _set("results.0.nodeid", "x" * 4097), "too_long", "results[0].nodeid", id="long-nodeid"
    ),
    pytest.param(_set("results.0.id", "i" * 129), "too_long", "results[0].id", id="long-id"),
    pytest.param(
        _set("results.0.message", "m" * 65_537),
        "too_long",
        "results[0].message",
        id="long-message",
    ),
    pytest.param(_set("run.branch", "b" * 4097), "too_long", "run.branch", id="long-branch"),
    pytest.param(_set("run.suite", ""), "invalid_value", "run.suite", id="empty-suite"),
    pytest.param(
        _set("results.1.tags", {f"k{i}": "v" for i in range(65)}),
        "too_many_tags",
        "results[1].tags",
        id="too-many-tags",
    ),
    pytest.param(
        _set("run.tags", {f"k{i}": "v" for i in range(65)}),
        "too_many_tags",
        "run.tags",
        id="too-many-run-tags",
    ),
    pytest.param(
        _set("results.0.tags", {"k" * 129: "v"}), "too_long", "results[0].tags", id="long-tag-key"
    ),
    pytest.param(
        _set("results.0.tags", {"k": "v" * 1025}),
        "too_long",
        "results[0].tags.k",
        id="long-tag-value",
    ),
    pytest.param(
        _set("results.0.tags", {"k": 1}), "invalid_type", "results[0].tags.k", id="tag-int"
    ),
    pytest.param(_set("results.0.tags", ["a"]), "invalid_type", "results[0].tags", id="tags-list"),
    pytest.param(
        _set("run.shard_total", 0), "invalid_value", "run.shard_total", id="shard-total-zero"
    ),
]


async def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"].startswith("[testengine] ")
    if field is not None and field.split(".")[-1] not in {"Content-Type", "Content-Encoding"}:
        assert field.split(".tags.")[0] in error["message"]
    return error  # type: ignore[no-any-return]


async def nothing_stored(app: Starlette) -> None:
    parts = collector_of(app).parts
    assert parts.sink.status()["last_offset"] == 0
    assert parts.store.results("default", "default", limit=10).items == []


@pytest.mark.parametrize(("mutate", "code", "field"), FIELD_CASES)
async def test_invalid_field_is_422_naming_it(
    client: httpx.AsyncClient, app: Starlette, mutate: Mutate, code: str, field: str
) -> None:
    obj = body(batch(3))
    mutate(obj)
    response = await client.post("/v1/results", content=encode(obj), headers=JSON)
    await assert_error(response, 422, code, field)
    await nothing_stored(app)


async def test_error_message_text(client: httpx.AsyncClient) -> None:
    obj = body(batch(3))
    obj["results"][1]["outcome"] = "exploded"
    response = await client.post("/v1/results", content=encode(obj), headers=JSON)
    assert response.json()["error"]["message"] == (
        "[testengine] unknown value 'exploded' for results[1].outcome: expected one of error, "
        "failed, passed, skipped, xfailed, xpassed"
    )
    obj = body(batch(1))
    obj["results"][0]["setup"] = -0.5
    response = await client.post("/v1/results", content=encode(obj), headers=JSON)
    assert response.json()["error"]["message"] == (
        "[testengine] invalid value -0.5 for results[0].setup: expected seconds from 0 to 1e+12"
    )


BODY_CASES = [
    pytest.param(b'{"schema": 1,', JSON, 400, "invalid_json", None, id="malformed-json"),
    pytest.param(b"", JSON, 400, "invalid_json", None, id="empty-body"),
    pytest.param(b"[1, 2]", JSON, 422, "invalid_type", None, id="top-level-array"),
    pytest.param(b"null", JSON, 422, "invalid_type", None, id="top-level-null"),
    pytest.param(b"NaN", JSON, 400, "invalid_json", None, id="nan"),
    pytest.param(b"[" * 5000 + b"]" * 5000, JSON, 400, "invalid_json", None, id="deep-nesting"),
    pytest.param(
        b'{"schema": 1, "run": {"run_id": "\\ud800"}, "results": []}',
        JSON,
        400,
        "invalid_json",
        None,
        id="lone-surrogate",
    ),
    pytest.param(
        b'{"schema": 1, "run": {"run_id": "\xff\xfe"}, "results": []}',
        JSON,
        400,
        "invalid_utf8",
        None,
        id="invalid-utf8",
    ),
    pytest.param(
        b'{"schema": 1, "run": {"run_id": "\xc3"}, "results": []}',
        JSON,
        400,
        "invalid_utf8",
        None,
        id="truncated-utf8",
    ),
    pytest.param(
        encode(body(batch(1))),
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
        "Content-Type",
        id="text-plain",
    ),
    pytest.param(
        encode(body(batch(1))),
        {},
        415,
        "unsupported_media_type",
        "Content-Type",
        id="no-content-type",
    ),
    pytest.param(
        encode(body(batch(1))),
        {"Content-Type": "application/json; charset=latin-1"},
        415,
        "unsupported_charset",
        "Content-Type",
        id="latin-1",
    ),
    pytest.param(
        encode(body(batch(1))),
        {"Content-Type": "application/json", "Content-Encoding": "br"},
        415,
        "unsupported_encoding",
        "Content-Encoding",
        id="brotli",
    ),
    pytest.param(
        encode(body(batch(1))), GZIP_JSON, 400, "invalid_gzip", None, id="gzip-header-plain-body"
    ),
    pytest.param(
        encode(body(batch(5)), compress=True)[:-20],
        GZIP_JSON,
        400,
        "invalid_gzip",
        None,
        id="truncated-gzip",
    ),
    pytest.param(
        gzip.compress(b'{"schema": 1, "run": {"run_id": "\xff"}, "results": []}'),
        GZIP_JSON,
        400,
        "invalid_utf8",
        None,
        id="gzip-invalid-utf8",
    ),
]


@pytest.mark.parametrize(("content", "headers", "status", "code", "field"), BODY_CASES)
async def test_bad_body_or_headers(
    client: httpx.AsyncClient,
    app: Starlette,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    response = await client.post("/v1/results", content=content, headers=headers)
    await assert_error(response, status, code, field)
    await nothing_stored(app)


def test_gzip_bomb_helper_really_expands() -> None:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    bomb = gzip_bomb(64 << 20)
    assert len(inflater.decompress(bomb)) == 64 << 20


async def test_gzip_bomb_is_413_without_inflating_it(client: httpx.AsyncClient) -> None:
    bomb = gzip_bomb(1 << 30)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 << 20
    response = await client.post("/v1/results", content=bomb, headers=GZIP_JSON)
    error = await assert_error(response, 413, "decompressed_too_large", None)
    assert "67108864" in error["message"]


async def test_body_over_the_limit_is_413(settings: CollectorSettings) -> None:
    app = create_app(settings.replace(max_body_bytes=10_000))
    async with serving(app) as client:
        content = encode(body(batch(100)))
        assert len(content) > 10_000
        response = await client.post("/v1/results", content=content, headers=JSON)
        error = await assert_error(response, 413, "body_too_large", None)
        assert "limit of 10000 bytes" in error["message"]

        async def chunks() -> Any:  # no Content-Length: the limit holds while streaming
            for start in range(0, len(content), 1000):
                yield content[start : start + 1000]

        response = await client.post("/v1/results", content=chunks(), headers=JSON)
        await assert_error(response, 413, "body_too_large", None)
        small = encode(body(batch(2)))
        response = await client.post("/v1/results", content=small, headers=JSON)
        assert response.status_code == 202


async def test_too_many_results_is_413_naming_results(settings: CollectorSettings) -> None:
    app = create_app(settings.replace(max_results_per_batch=10))
    async with serving(app) as client:
        response = await client.post("/v1/results", content=encode(body(batch(11))), headers=JSON)
        error = await assert_error(response, 413, "too_many_results", "results")
        assert "11 results" in error["message"]
        response = await client.post("/v1/results", content=encode(body(batch(10))), headers=JSON)
        assert response.status_code == 202


async def test_limits_are_settings(settings: CollectorSettings) -> None:
    app = create_app(settings.replace(max_tags=2, max_string_length=30, max_message_length=5))
    async with serving(app) as client:
        obj = body(batch(1, tags={"a": "1", "b": "2", "c": "3"}))
        response = await client.post("/v1/results", content=encode(obj), headers=JSON)
        await assert_error(response, 422, "too_many_tags", "results[0].tags")
        obj = body(batch(1, tags={}, message="123456"))
        response = await client.post("/v1/results", content=encode(obj), headers=JSON)
        await assert_error(response, 422, "too_long", "results[0].message")
        obj = body(batch(1, tags={}, nodeid="n" * 31))
        response = await client.post("/v1/results", content=encode(obj), headers=JSON)
        await assert_error(response, 422, "too_long", "results[0].nodeid")


async def test_rejections_are_counted_in_metrics(client: httpx.AsyncClient) -> None:
    obj = body(batch(4))
    obj["results"][3]["outcome"] = "?"
    await client.post("/v1/results", content=encode(obj), headers=JSON)
    await client.post("/v1/results", content=b"{", headers=JSON)
    text = (await client.get("/metrics")).text
    assert 'testengine_batches_rejected_total{code="invalid_value"} 1.0' in text
    assert 'testengine_results_rejected_total{code="invalid_value"} 4.0' in text
    assert 'testengine_batches_rejected_total{code="invalid_json"} 1.0' in text
    assert 'testengine_http_requests_total{method="POST",route="post_results",status="422"}' in text
