"""Fuzzing POST /v1/results: whatever the body and headers, a JSON answer below 500."""

from __future__ import annotations

import gzip
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
from tests.collector.batches import batch, body
from tests.collector.conftest import serving

Client = tuple[BlockingPortal, httpx.AsyncClient]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    settings_ = CollectorSettings(
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        max_body_bytes=64 * 1024,
        max_decompressed_bytes=256 * 1024,
        max_results_per_batch=50,
        max_string_length=200,
        max_tags=8,
    )
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(serving(create_app(settings_))) as client,
    ):
        yield portal, client


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)

RESULT_KEYS = list(body(batch(1))["results"][0])
RUN_KEYS = list(body(batch(1))["run"])


@st.composite
def mutated_batches(draw: st.DrawFn) -> bytes:
    """A valid batch with a few fields replaced, removed or added."""
    obj: dict[str, Any] = body(batch(draw(st.integers(0, 4))))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "run", "result"]))
        target: Any = obj
        keys = ["schema", "run", "results"]
        if where == "run":
            target, keys = obj.get("run"), RUN_KEYS
        elif where == "result":
            results = obj.get("results")
            if not isinstance(results, list) or not results:
                continue
            target, keys = draw(st.sampled_from(results)), RESULT_KEYS
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(keys) | st.text(max_size=8))
        if draw(st.booleans()):
            target[key] = draw(json_values)
        else:
            target.pop(key, None)
    return orjson.dumps(obj)


bodies = st.one_of(
    st.binary(max_size=3000),
    json_values.map(orjson.dumps),
    mutated_batches(),
    mutated_batches().map(lambda b: b[: len(b) // 2]),
)
content_types = st.just("application/json") | st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/json; charset=latin-1",
        "text/plain",
        "",
        None,
    ]
)
encodings = st.sampled_from([None, "gzip", "identity", "br", "gzip, gzip", ""])
transfer = st.one_of(
    st.sampled_from([(None, False), ("gzip", True)]),  # consistent
    st.tuples(encodings, st.booleans()),  # anything
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(content=bodies, content_type=content_types, transfer=transfer)
def test_any_request_gets_a_json_answer_below_500(
    fuzz_client: Client,
    content: bytes,
    content_type: str | None,
    transfer: tuple[str | None, bool],
) -> None:
    portal, client = fuzz_client
    encoding, compress = transfer
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if compress:
        content = gzip.compress(content)
    response = portal.call(lambda: client.post("/v1/results", content=content, headers=headers))
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code == 202:
        assert answer == {
            "accepted": len(
                orjson.loads(gzip.decompress(content) if compress else content)["results"]
            )
        }
        return
    assert 400 <= response.status_code < 500
    error = answer["error"]
    assert set(error) == {"code", "message", "field"}
    assert isinstance(error["code"], str)
    assert error["message"].startswith("[testengine] ")
    assert error["field"] is None or isinstance(error["field"], str)
