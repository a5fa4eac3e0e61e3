"""POST /v1/results and the read API, in process over ASGITransport with a real SQLite store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from collector_server.app import create_app
from collector_server.auth import TokenStore
from collector_server.settings import CollectorSettings
from collector_server.sinks import SinkUnavailable
from collector_server.sinks.local import LocalLogSink, decode_entry
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import Batch, Record, encode_batch
from tests.collector.batches import GZIP_JSON, JSON, batch, body, encode, result
from tests.collector.conftest import caught_up, collector_of, serving

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, b: Batch, token: str | None = None) -> httpx.Response:
    headers = dict(JSON)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post("/v1/results", content=encode_batch(b), headers=headers)


async def test_accepted_batch_is_stored_with_statistics(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    sent = batch(3, suite="unit")
    response = await client.post(
        "/v1/results", content=encode(body(sent), compress=True), headers=GZIP_JSON
    )
    assert (response.status_code, response.json()) == (202, {"accepted": 3})
    await caught_up(app)
    results = (await client.get("/v1/suites/unit/results")).json()
    assert results["next_cursor"] is None
    assert [r["id"] for r in results["items"]] == [r.id for r in sent.results]
    first = results["items"][0]
    assert first["nodeid"] == "tests/test_a.py::test_0"
    assert (first["run_id"], first["suite"], first["tags"]) == (
        sent.run.run_id,
        "unit",
        {"team": "core"},
    )
    tests = (await client.get("/v1/suites/unit/tests")).json()["items"]
    assert [t["nodeid"] for t in tests] == [f"tests/test_a.py::test_{i}" for i in range(3)]
    assert tests[0]["runs"] == 1
    assert tests[0]["outcomes"]["passed"] == 1
    assert tests[0]["median_duration"] == 0.5
    assert tests[0]["last_seen"] == 1_700_000_000.5
    runs = (await client.get("/v1/suites/unit/runs")).json()["items"]
    assert len(runs) == 1
    assert (runs[0]["run_id"], runs[0]["total"], runs[0]["branch"]) == (sent.run.run_id, 3, "main")
    assert runs[0]["outcomes"] == {
        "passed": 3,
        "failed": 0,
        "skipped": 0,
        "xfailed": 0,
        "xpassed": 0,
        "error": 0,
    }
    suites = (await client.get("/v1/suites")).json()["items"]
    assert [(s["suite"], s["results"]) for s in suites] == [("unit", 3)]


async def test_duplicate_result_ids_are_accepted_and_stored_once(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    sent = batch(4)
    doubled = Batch(sent.run, [*sent.results, sent.results[0]])
    assert (await post(client, sent)).json() == {"accepted": 4}
    assert (await post(client, doubled)).json() == {"accepted": 5}
    await caught_up(app)
    items = (await client.get("/v1/suites/default/results")).json()["items"]
    assert sorted(r["id"] for r in items) == sorted(r.id for r in sent.results)
    runs = (await client.get("/v1/suites/default/runs")).json()["items"]
    assert runs[0]["total"] == 4
    tests = (await client.get("/v1/suites/default/tests")).json()["items"]
    assert [t["runs"] for t in tests] == [1, 1, 1, 1]
    metrics = (await client.get("/metrics")).text
    assert "testengine_results_accepted_total 9.0" in metrics
    assert "testengine_processor_new_results_total 4.0" in metrics


async def test_202_means_the_batch_is_in_the_log(client: httpx.AsyncClient, app: Starlette) -> None:
    sent = batch(2)
    assert (await post(client, sent)).status_code == 202
    sink = collector_of(app).parts.sink
    assert isinstance(sink, LocalLogSink)
    with sqlite3.connect(sink.log.path) as other:  # another connection sees it: committed
        rows = other.execute("SELECT data FROM log").fetchall()
    other.close()
    assert [r.result.id for row in rows for r in decode_entry(row[0])] == [
        r.id for r in sent.results
    ]


class GatedSink:
    """A sink whose publish waits for the test to open a gate, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.fail = fail
        self.published: list[Record] = []

    async def start(self) -> None:
        pass

    async def publish(self, records: Sequence[Record]) -> None:
        if self.fail:
            raise SinkUnavailable("[testengine] sink down", retry_after=7)
        self.entered.set()
        await self.gate.wait()
        self.published.extend(records)

    async def close(self) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"ready": not self.fail, "kind": "gated"}


async def test_answer_waits_for_the_sink(settings: CollectorSettings) -> None:
    sink = GatedSink()
    store = SqliteStore(settings.data_dir / "store.db").open()
    app = create_app(settings, sink=sink, store=store)
    answers: list[httpx.Response] = []
    async with serving(app) as client, anyio.create_task_group() as tg:

        async def send() -> None:
            answers.append(await post(client, batch(2)))

        tg.start_soon(send)
        with anyio.fail_after(10):
            await sink.entered.wait()
        await anyio.wait_all_tasks_blocked()
        assert answers == []  # the request is parked in the sink: no answer yet
        assert sink.published == []
        sink.gate.set()
    assert [a.status_code for a in answers] == [202]
    assert len(sink.published) == 2


async def test_sink_unavailable_is_503_with_retry_after(settings: CollectorSettings) -> None:
    store = SqliteStore(settings.data_dir / "store.db").open()
    app = create_app(settings, sink=GatedSink(fail=True), store=store)
    async with serving(app) as client:
        response = await post(client, batch(1))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "sink_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"


async def test_paging_with_limit_and_cursor(client: httpx.AsyncClient, app: Starlette) -> None:
    sent = [batch(7, suite="p", nodeid=f"t.py::test_{i}") for i in range(3)]
    for b in sent:
        await post(client, Batch(b.run, [result(i, nodeid=f"t.py::test_{i}") for i in range(7)]))
    await caught_up(app)
    for path, total in [("results", 21), ("tests", 7), ("runs", 3)]:
        seen: list[dict[str, object]] = []
        cursor = None
        for _ in range(50):
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await client.get(f"/v1/suites/p/{path}", params=params)).json()
            assert len(page["items"]) <= 2
            seen.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == total, path
        everything = (await client.get(f"/v1/suites/p/{path}", params={"limit": 100000})).json()
        assert seen == everything["items"]
    runs = (await client.get("/v1/suites/p/runs")).json()["items"]
    assert [r["run_id"] for r in runs] == [b.run.run_id for b in reversed(sent)]  # newest first


async def test_results_of_one_run(client: httpx.AsyncClient, app: Starlette) -> None:
    one, two = batch(2, suite="r"), batch(3, suite="r")
    await post(client, one)
    await post(client, two)
    await caught_up(app)
    page = await client.get("/v1/suites/r/results", params={"run_id": two.run.run_id})
    assert sorted(r["id"] for r in page.json()["items"]) == sorted(r.id for r in two.results)


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        pytest.param({"limit": "0"}, "limit", "invalid_limit", id="limit-0"),
        pytest.param({"limit": "100001"}, "limit", "invalid_limit", id="limit-over-max"),
        pytest.param({"limit": "ten"}, "limit", "invalid_limit", id="limit-text"),
        pytest.param({"cursor": "garbage!"}, "cursor", "invalid_cursor", id="cursor-garbage"),
        pytest.param(
            {"cursor": "WyJzdWl0ZXMiLCJhIl0"}, "cursor", "invalid_cursor", id="wrong-list"
        ),
    ],
)
async def test_bad_paging_is_400(
    client: httpx.AsyncClient, params: dict[str, str], field: str, code: str
) -> None:
    response = await client.get("/v1/suites/default/results", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field
    assert response.json()["error"]["code"] == code


async def test_unknown_route_and_method_are_json_errors(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/nothing")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = await client.get("/v1/results")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")


async def test_tenants_are_isolated(settings: CollectorSettings) -> None:
    tokens = TokenStore(settings.data_dir)
    token_a, token_b = tokens.create("acme"), tokens.create("globex")
    app = create_app(settings)
    async with serving(app) as client:
        assert (await post(client, batch(3, suite="s"), token_a)).status_code == 202
        assert (await post(client, batch(1, suite="only-b"), token_b)).status_code == 202
        await caught_up(app)

        async def items(path: str, token: str) -> list[str]:
            response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            return [i.get("suite") or i.get("nodeid") or i["id"] for i in response.json()["items"]]

        assert await items("/v1/suites", token_a) == ["s"]
        assert await items("/v1/suites", token_b) == ["only-b"]
        assert len(await items("/v1/suites/s/results", token_a)) == 3
        for path in ("/v1/suites/s/results", "/v1/suites/s/tests", "/v1/suites/s/runs"):
            assert await items(path, token_b) == []
        # the same result ids under another tenant are that tenant's own results
        again = batch(3, suite="s")
        assert (await post(client, again, token_b)).status_code == 202
        await caught_up(app)
        assert len(await items("/v1/suites/s/results", token_b)) == 3
        assert len(await items("/v1/suites/s/results", token_a)) == 3


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param(None, "missing_token", id="missing"),
        pytest.param("Bearer te_wrong", "invalid_token", id="wrong"),
        pytest.param("Basic dXNlcjpwYXNz", "invalid_token", id="basic"),
    ],
)
async def test_requests_without_a_valid_token_are_401(
    settings: CollectorSettings, header: str | None, code: str
) -> None:
    TokenStore(settings.data_dir).create("acme")
    async with serving(create_app(settings)) as client:
        headers = {**JSON, **({"Authorization": header} if header else {})}
        for response in (
            await client.post("/v1/results", content=encode_batch(batch(1)), headers=headers),
            await client.get("/v1/suites", headers=headers),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == code
            assert response.json()["error"]["field"] == "Authorization"


async def test_non_loopback_without_tokens_answers_401(settings: CollectorSettings) -> None:
    async with serving(create_app(settings.replace(host="0.0.0.0"))) as client:
        response = await client.get("/v1/suites")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "no_tokens"
        assert (
            "testengine-collector tokens create --tenant NAME"
            in response.json()["error"]["message"]
        )


async def test_health_ready_metrics(client: httpx.AsyncClient, app: Starlette) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["processor"]["running"] is True
    await post(client, batch(5))
    await caught_up(app)
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "testengine_results_accepted_total 5.0" in text
    assert "testengine_batch_size_results_count 1.0" in text
    assert "testengine_processor_records_total 5.0" in text
    assert 'testengine_http_request_duration_seconds_count{route="post_results"} 1.0' in text


async def test_not_ready_before_startup(settings: CollectorSettings) -> None:
    app = create_app(settings)  # lifespan not run: parts not started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_empty_batch_is_accepted(client: httpx.AsyncClient, app: Starlette) -> None:
    assert (await post(client, batch(0))).json() == {"accepted": 0}
    assert collector_of(app).parts.sink.status()["last_offset"] == 0


async def test_suite_names_with_slashes_and_spaces(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    sent = batch(2, suite="team a/unit tests")
    await post(client, sent)
    await caught_up(app)
    for path in (
        "/v1/suites/team a/unit tests/results",
        "/v1/suites/team%20a%2Funit%20tests/tests",
    ):
        assert len((await client.get(path)).json()["items"]) == 2, path
    suites = (await client.get("/v1/suites")).json()["items"]
    assert [s["suite"] for s in suites] == ["team a/unit tests"]


async def test_results_are_queryable_within_two_seconds_of_the_202(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    sent = batch(500)
    started = time.monotonic()
    assert (await post(client, sent)).status_code == 202
    await caught_up(app, timeout=2.0)
    page = (await client.get("/v1/suites/default/results", params={"limit": 1000})).json()
    assert len(page["items"]) == 500
    assert time.monotonic() - started < 2.0


async def test_a_gzipped_batch_is_kept_gzipped_and_read_back_whole(
    client: httpx.AsyncClient, app: Starlette, settings: CollectorSettings
) -> None:
    sent = batch(300, suite="gz")
    compressed = encode(body(sent), compress=True)
    response = await client.post("/v1/results", content=compressed, headers=GZIP_JSON)
    assert response.status_code == 202
    plain = await post(client, batch(2, suite="gz"))  # and one sent without gzip
    assert plain.status_code == 202
    await caught_up(app)
    items = (await client.get("/v1/suites/gz/results", params={"limit": 1000})).json()["items"]
    assert [r["id"] for r in items[:300]] == [r.id for r in sent.results]
    assert len(items) == 302
    conn = sqlite3.connect(settings.data_dir / "store.db")
    blobs = [row[0] for row in conn.execute("SELECT data FROM batches ORDER BY last")]
    conn.close()
    assert blobs[0].endswith(compressed)  # the body as it came, after the header line
    assert blobs[0].startswith(b'{"v":3,')
    assert blobs[1].startswith(b'{"v":2,')
