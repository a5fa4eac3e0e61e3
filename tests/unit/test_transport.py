"""Transport: classification of answers, and real requests to a local HTTP server."""

from __future__ import annotations

import base64
import gzip
import socket
import threading
import time

import orjson
import pytest

from pytest_testengine.transport import (
    Delivered,
    Proxy,
    Rejected,
    Retry,
    Transport,
    bypassed,
    classify,
    parse_retry_after,
    proxy_for,
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


def test_content_is_the_same_gzip_for_the_same_body_and_is_sent_as_given() -> None:
    body = orjson.dumps({"results": [{"n": i} for i in range(100)]})
    with scripted_server() as server:
        transport = Transport(server.url, timeout=5.0)
        try:
            content = transport.content(body)
            assert content[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
            assert gzip.decompress(content) == body
            assert transport.post(body, content=content) == Delivered(202, 100)
        finally:
            transport.close()
        assert server.requests[0].raw == content


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


def test_a_base_path_in_the_url_prefixes_every_request() -> None:
    with scripted_server() as server:
        transport = Transport(server.url + "/collector/", environ={})
        try:
            assert isinstance(transport.post(b'{"results": []}'), Delivered)
        finally:
            transport.close()
    assert [r.path for r in server.requests] == ["/collector/v1/results"]


class _ClosingServer:
    """Answers each request 202 (keep-alive), then closes the connection while idle, as a
    server does when its keep-alive timeout passes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(10.0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, args=(2,), daemon=True)
        self.thread.start()

    def _serve(self, requests: int) -> None:
        for _ in range(requests):
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                answer = b'{"accepted": 0}'
                conn.sendall(
                    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                conn.shutdown(socket.SHUT_RDWR)


def test_an_idle_connection_the_server_closed_is_replaced_not_failed() -> None:
    server = _ClosingServer()
    transport = Transport(server.url, environ={})
    transport.idle_check = 0.0  # checked after any pause (1 s by default)
    try:
        first = transport.post(b'{"results": []}')
        deadline = time.monotonic() + 5.0
        while server.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the server's FIN reaches the client
        second = transport.post(b'{"results": []}')
    finally:
        transport.close()
        server.thread.join(10)
        server.sock.close()
    assert (first, second) == (Delivered(202, 0), Delivered(202, 0))
    assert server.connections == 2


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        pytest.param("collector.ci.example", 80, "", False, id="empty"),
        pytest.param("collector.ci.example", 80, "*", True, id="star"),
        pytest.param("collector.ci.example", 80, "collector.ci.example", True, id="host"),
        pytest.param("collector.ci.example", 80, "other, ci.example", True, id="domain"),
        pytest.param("collector.ci.example", 80, ".ci.example", True, id="dot-domain"),
        pytest.param("collector.ci.example", 80, "i.example", False, id="not-a-suffix-label"),
        pytest.param("127.0.0.1", 8765, "127.0.0.1:8765", True, id="host-port"),
        pytest.param("127.0.0.1", 8000, "127.0.0.1:8765", False, id="other-port"),
        pytest.param("Collector.CI.example", 80, "ci.EXAMPLE", True, id="case"),
    ],
)
def test_no_proxy(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        pytest.param("http://c:8765", {}, None, id="none"),
        pytest.param(
            "http://c:8765",
            {"HTTP_PROXY": "http://proxy:3128"},
            Proxy("proxy", 3128, None),
            id="http",
        ),
        pytest.param("https://c", {"HTTP_PROXY": "http://proxy:3128"}, None, id="http-only"),
        pytest.param(
            "https://c",
            {"HTTPS_PROXY": "proxy:8080", "https_proxy": "http://lower:8081"},
            Proxy("lower", 8081, None),
            id="lower-case-wins",
        ),
        pytest.param(
            "http://c",
            {"ALL_PROXY": "http://u%40x:p%3Aw@proxy"},
            Proxy("proxy", 80, "Basic " + base64.b64encode(b"u@x:p:w").decode()),
            id="all-with-credentials",
        ),
        pytest.param(
            "http://c", {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "c"}, None, id="no-proxy"
        ),
    ],
)
def test_proxy_from_the_environment(
    url: str, environ: dict[str, str], expected: Proxy | None
) -> None:
    assert proxy_for(url, environ) == expected


def test_an_http_collector_is_reached_through_the_proxy_with_credentials() -> None:
    with scripted_server() as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        environ = {"HTTP_PROXY": f"http://ci:s3cret@127.0.0.1:{port}"}
        transport = Transport("http://collector.invalid:8765", environ=environ)
        try:
            assert transport.post(b'{"results": []}') == Delivered(202, 0)
        finally:
            transport.close()
    (request,) = proxy.requests
    assert request.path == "http://collector.invalid:8765/v1/results"
    assert request.headers["Proxy-Authorization"] == "Basic " + base64.b64encode(
        b"ci:s3cret"
    ).decode("ascii")


def test_an_https_collector_is_tunnelled_and_a_refused_tunnel_is_retryable() -> None:
    with scripted_server() as proxy:  # it answers CONNECT with 501: no tunnel
        transport = Transport("https://collector.invalid", environ={"HTTPS_PROXY": proxy.url})
        try:
            answer = transport.post(b'{"results": []}')
        finally:
            transport.close()
    assert isinstance(answer, Retry)
    assert answer.unreachable
    assert answer.reason.startswith("could not reach the collector at https://collector.invalid")
    assert "Tunnel connection failed: 501" in answer.reason
