"""A small real HTTP server on 127.0.0.1 that answers ``POST /v1/results`` from a script.

Each request takes the next scripted answer (status, headers, body); once the script is used
up, requests are forwarded to ``upstream`` (a real collector) or answered 202.  Every request
is recorded (headers and decoded body), so tests count attempts and check what was sent.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds before answering (a slow collector)


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    headers: Mapping[str, str]
    raw: bytes
    body: Any  # decoded JSON, or None
    at: float  # time.monotonic() when it arrived


class ScriptedServer:
    def __init__(self, script: Sequence[Answer] = (), *, upstream: str | None = None) -> None:
        self.script = list(script)
        self.upstream = upstream
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._client = httpx.Client(timeout=30.0)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._client.close()

    def results(self) -> list[dict[str, Any]]:
        """Every result of every request received (including those answered with errors)."""
        return [r for req in self.requests if req.body for r in req.body.get("results", [])]

    def _next(self) -> Answer | None:
        with self._lock:
            return self.script.pop(0) if self.script else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                data = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                try:
                    body = orjson.loads(data)
                except orjson.JSONDecodeError:
                    body = None
                with server._lock:
                    server.requests.append(
                        Request(self.path, dict(self.headers), raw, body, time.monotonic())
                    )
                answer = server._next()
                if answer is None and server.upstream is not None:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("content-type", "content-encoding", "authorization")
                    }
                    response = server._client.post(
                        server.upstream + self.path, content=raw, headers=headers
                    )
                    answer = Answer(
                        response.status_code, {"Content-Type": "application/json"}, response.content
                    )
                elif answer is None:
                    count = len(body.get("results", [])) if isinstance(body, dict) else 0
                    answer = Answer(
                        202, {"Content-Type": "application/json"}, orjson.dumps({"accepted": count})
                    )
                if answer.delay:
                    server._stop.wait(answer.delay)
                try:
                    self.send_response(answer.status)
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a deliberately slow answer): expected

        return Handler


@contextmanager
def scripted_server(
    script: Sequence[Answer] = (), *, upstream: str | None = None
) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script, upstream=upstream).start()
    try:
        yield server
    finally:
        server.close()
