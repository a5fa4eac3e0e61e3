"""The client side of the collector's HTTP API: the only module of the plugin that speaks HTTP.

One kept-alive connection (:mod:`http.client`), gzip bodies, a bearer token, the proxy of the
``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` environment.  The standard library's client is
used on purpose: it costs a test run a few milliseconds of imports and well under a
millisecond per batch, where a full-featured client library costs a hundred milliseconds of
CPU per run (``benchmarks/README.md``, "Plugin overhead").  Every attempt ends in one of
three answers, never an exception:

- :class:`Delivered`: a 2xx, the batch is durable on the collector;
- :class:`Retry`: worth trying again: connection errors, timeouts, 408, 429 and 5xx, with the
  collector's ``Retry-After`` when it sent one;
- :class:`Rejected`: any other answer; trying again will not help.  ``keep`` says whether the
  batch is worth keeping in the spool (401/403/404: the token or URL is wrong and can be fixed;
  400/413/415/422: the batch itself is refused).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

import orjson

from pytest_testengine import __version__

RESULTS_PATH: Final = "/v1/results"
_KEEP_STATUSES: Final = frozenset({401, 403, 404, 405})
MAX_RETRY_AFTER: Final = 3600.0
_PROXY_VARIABLES: Final = frozenset({"http_proxy", "https_proxy", "all_proxy"})


# named tuples, not dataclasses: cheaper to define, in every run that sends
class Delivered(NamedTuple):
    status: int
    accepted: int | None = None


class Retry(NamedTuple):
    reason: str
    retry_after: float | None = None
    unreachable: bool = False  # no answer at all (connection error or timeout)


class Rejected(NamedTuple):
    status: int
    reason: str
    keep: bool  # worth spooling: the problem is the configuration, not the batch


Answer = Delivered | Retry | Rejected


class Reply(NamedTuple):
    """A 2xx answer to :meth:`Transport.call`, with its JSON body."""

    status: int
    data: object


CallAnswer = Reply | Retry | Rejected


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # nan
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_text(body: bytes) -> str:
    """``code: message (field)`` from the collector's error shape, or the start of the body."""
    try:
        error = orjson.loads(body)["error"]
        text = f"{error['code']}: {error['message']}"
        if error.get("field"):
            text += f" (field {error['field']})"
        return str(text)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or "no details"


def _is_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def classify(status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Answer:
    """The meaning of one HTTP answer to a batch (pure)."""
    if 200 <= status < 300:
        try:
            accepted = orjson.loads(body).get("accepted")
        except (orjson.JSONDecodeError, AttributeError):
            accepted = None
        return Delivered(status, accepted if isinstance(accepted, int) else None)
    if _is_retryable(status):
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        return Retry(f"the collector answered {status} ({_error_text(body)})", retry_after)
    return Rejected(
        status,
        f"the collector rejected the batch with {status} ({_error_text(body)})",
        keep=status in _KEEP_STATUSES,
    )


def describe_error(exc: BaseException, url: str) -> str:
    """One line about a request that got no answer."""
    if isinstance(exc, TimeoutError):
        return f"the collector at {url} did not answer in time ({type(exc).__name__})"
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionRefusedError) or "refused" in detail.lower():
        detail = "connection refused"
    return f"could not reach the collector at {url} ({detail})"


class Proxy(NamedTuple):
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header, from user:password@


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` covers ``host``: ``*``, the host itself, or a domain it is in
    (``example.com`` and ``.example.com`` both cover ``ci.example.com``), with an optional
    ``:port`` that must match."""
    host = host.lower()
    for entry in no_proxy.replace(" ", "").lower().split(","):
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_for(url: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``/
    ``ALL_PROXY``, either case, lower case first), or None (none set, or ``NO_PROXY`` covers
    the host)."""
    if not any(key.lower() in _PROXY_VARIABLES for key in environ):
        return None  # the common case
    parts = urlsplit(url)
    host = parts.hostname or ""
    names = {key.lower(): value for key, value in environ.items() if not key.islower()}
    names.update((key, value) for key, value in environ.items() if key.islower())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if bypassed(host, port, names.get("no_proxy", "")):
        return None
    value = names.get(f"{parts.scheme}_proxy") or names.get("all_proxy")
    if not value:
        return None
    proxy = urlsplit(value if "://" in value else f"http://{value}")
    authorization = None
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(proxy.hostname or "", proxy.port or 80, authorization)


class Transport:
    """Posts to one collector over one kept-alive connection (safe to share between threads:
    one request at a time)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        compress: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.compress = compress
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path
        self._proxy = proxy_for(self.url, os.environ if environ is None else environ)
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pytest-testengine/{__version__}",
            "Accept": "application/json",
        }
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._used = 0.0  # time.monotonic() at the end of the last exchange
        #: Seconds idle after which a kept-alive connection is checked before use.
        self.idle_check = 1.0

    def __repr__(self) -> str:
        return f"Transport({self.url!r}, compress={self.compress})"

    def content(self, body: bytes) -> bytes:
        """What goes on the wire for ``body``: gzip at level 1 (``mtime=0``: zlib writes the
        header and the checksum itself, in one pass), or the body as it is."""
        return gzip.compress(body, compresslevel=1, mtime=0) if self.compress else body

    def post(
        self, body: bytes, *, timeout: float | None = None, content: bytes | None = None
    ) -> Answer:
        """Post one JSON batch (``body`` uncompressed; ``content``, if given, is what
        :meth:`content` makes of it) to ``/v1/results``; ``timeout`` caps this attempt."""
        if content is None:
            content = self.content(body)
        got = self._request(RESULTS_PATH, content, timeout)
        if isinstance(got, Retry):
            return got
        status, headers, data = got
        return classify(status, headers, data, now=time.time())

    def call(self, path: str, payload: object, *, timeout: float | None = None) -> CallAnswer:
        """POST ``payload`` as JSON to ``path`` (the split plan endpoints) and read the JSON
        answer; like :meth:`post`, never raises for a network or HTTP problem."""
        got = self._request(path, self.content(orjson.dumps(payload)), timeout)
        if isinstance(got, Retry):
            return got
        status, headers, data = got
        if 200 <= status < 300:
            try:
                return Reply(status, orjson.loads(data))
            except orjson.JSONDecodeError:
                return Rejected(status, f"the collector answered {status} without JSON", False)
        reason = f"the collector answered {status} to POST {path} ({_error_text(data)})"
        if _is_retryable(status):
            retry_after = parse_retry_after(headers.get("retry-after"), now=time.time())
            return Retry(reason, retry_after)
        return Rejected(status, reason, keep=False)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- one request ------------------------------------------------------------------------

    def _request(
        self, path: str, content: bytes, timeout: float | None
    ) -> tuple[int, dict[str, str], bytes] | Retry:
        limit = self.timeout if timeout is None else max(0.05, min(timeout, self.timeout))
        target = self._base + path
        if self._proxy is not None and not self._https:
            target = f"http://{self._host}:{self._port}{target}"  # absolute form for the proxy
        with self._lock:
            try:
                connection = self._connect(limit)
                connection.request("POST", target, body=content, headers=self._headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                return Retry(describe_error(exc, self.url), unreachable=True)
            self._used = time.monotonic()
            headers = {key.lower(): value for key, value in response.getheaders()}
            if response.will_close:
                self._drop()
        return response.status, headers, data

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        # a kept-alive connection idle for a while may have been closed by the server: then
        # open a new one rather than send into it (one system call, so only after a pause)
        if (
            connection is not None
            and connection.sock is not None
            and time.monotonic() - self._used > self.idle_check
            and _closed_by_peer(connection.sock)
        ):
            self._drop()
            connection = None
        if connection is None:
            connection = self._connection = self._new_connection(timeout)
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        else:
            connection.timeout = timeout  # connect() uses it
        return connection

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        proxy = self._proxy
        host, port = (proxy.host, proxy.port) if proxy else (self._host, self._port)
        connection: http.client.HTTPConnection
        if self._https:
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        if proxy is not None:
            extra = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}
            if self._https:
                connection.set_tunnel(self._host, self._port, headers=extra)
            elif extra:
                self._headers.update(extra)
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent
    something unasked), so it cannot carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
