"""Transport: classification of answers, and real requests to a local HTTP server."""

from __future__ import annotations

import gzip
import socket

import orjson
import pytest

from pytest_testengine.transport import (
    Delivered,
    Rejected,
    Retry,
    Transport,
    classify,
    parse_retry_after,
)
from tests.plugin.scripted_server import Answer, scripted_server

NOW = 1_700_000_000.0
ERROR = orjson.dumps(
    {
        "error": {
            "code": "invalid",
            "message": "unknown outcome 'meh'",
            "field": "results[3].outcome",
        }
    }
)


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        pytest.param(202, {}, b'{"accepted": 3}', Delivered(202, 3), id="202"),
        pytest.param(200, {}, b"not json", Delivered(200, None), id="200-no-json"),
        pytest.param(
            503,
            {"retry-after": "2"},
            b"",
            Retry("the collector answered 503 (no details)", 2.0),
            id="503-retry-after",
        ),
        pytest.param(500, {}, b"boom", Retry("the collector answered 500 (boom)", None), id="500"),
        pytest.param(
            429,
            {"retry-after": "Tue, 14 Nov 2023 22:13:25 GMT"},
            b"",
            Retry("the collector answered 429 (no details)", 5.0),
            id="429-http-date",
        ),
        pytest.param(408, {}, b"", Retry("the collector answered 408 (no details)"), id="408"),
        pytest.param(
            422,
            {},
            ERROR,
            Rejected(
                422,
                "the collector rejected the batch with 422 "
                "(invalid: unknown outcome 'meh' (field results[3].outcome))",
                keep=False,
            ),
            id="422",
        ),
        pytest.param(
            401,
            {},
            orjson.dumps(
                {"error": {"code": "unauthorized", "message": "bad token", "field": None}}
            ),
            Rejected(
                401,
                "the collector rejected the batch with 401 (unauthorized: bad token)",
                keep=True,
            ),
            id="401-keep",
        ),
        pytest.param(
            404,
            {},
            b"",
            Rejected(404, "the collector rejected the batch with 404 (no details)", keep=True),
            id="404-keep",
        ),
        pytest.param(
            413,
            {},
            b"",
            Rejected(413, "the collector rejected the batch with 413 (no details)", keep=False),
            id="413",
        ),
    ],
)
def test_classify(status: int, headers: dict[str, str], body: bytes, expected: object) -> None:
    assert classify(status, headers, body, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("3", 3.0, id="seconds"),
        pytest.param("0.5", 0.5, id="fraction"),
        pytest.param("-4", 0.0, id="negative-clamped"),
        pytest.param("999999", 3600.0, id="capped"),
        pytest.param("Tue, 14 Nov 2023 22:13:30 GMT", 10.0, id="http-date"),
        pytest.param("Tue, 14 Nov 2023 22:13:00 GMT", 0.0, id="http-date-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_posts_gzip_json_with_the_bearer_token_on_one_connection() -> None:
    with scripted_server() as server:
        transport = Transport(server.url, token="s3cret", timeout=5.0)
        try:
            for n in range(3):
                answer = transport.post(orjson.dumps({"results": [{"n": i} for i in range(n)]}))
                assert answer == Delivered(202, n)
        finally:
            transport.close()
        assert [len(r.body["results"]) for r in server.requests] == [0, 1, 2]
        request = server.requests[0]
        assert request.path == "/v1/results"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer s3cret"
        assert request.headers["User-Agent"].startswith("pytest-testengine/")
        assert gzip.decompress(request.raw).startswith(b'{"results"')
        assert "s3cret" not in repr(transport)


def test_without_compression_and_without_a_token() -> None:
    with scripted_server() as server:
        transport = Transport(server.url, compress=False)
        try:
            assert isinstance(transport.post(b'{"results": []}'), Delivered)
        finally:
            transport.close()
        (request,) = server.requests
        assert "Content-Encoding" not in request.headers
        assert "Authorization" not in request.headers
        assert request.raw == b'{"results": []}'


def test_scripted_answers_are_classified() -> None:
    script = [Answer(503, {"Retry-After": "1"}), Answer(429), Answer(400, body=ERROR)]
    with scripted_server(script) as server:
        transport = Transport(server.url)
        try:
            answers = [transport.post(b"{}") for _ in range(4)]
        finally:
            transport.close()
    assert answers[0] == Retry("the collector answered 503 (no details)", 1.0)
    assert isinstance(answers[1], Retry)
    assert isinstance(answers[2], Rejected)
    assert not answers[2].keep
    assert isinstance(answers[3], Delivered)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    transport = Transport(url, timeout=2.0)
    try:
        answer = transport.post(b"{}")
    finally:
        transport.close()
    assert answer == Retry(
        f"could not reach the collector at {url} (connection refused)", unreachable=True
    )


def test_a_slow_answer_times_out_and_is_retryable() -> None:
    with scripted_server([Answer(202, delay=5.0)]) as server:
        transport = Transport(server.url, timeout=5.0)
        try:
            answer = transport.post(b"{}", timeout=0.2)
        finally:
            transport.close()
    assert isinstance(answer, Retry)
    assert answer.unreachable
    assert answer.reason.startswith(f"the collector at {server.url} did not answer in time")
