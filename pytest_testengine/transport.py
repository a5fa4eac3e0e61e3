"""The client side of ``POST /v1/results``: the only module of the plugin that speaks HTTP.

One :class:`httpx.Client` (one kept-alive connection), gzip bodies, a bearer token.  Every
attempt ends in one of three answers, never an exception:

- :class:`Delivered`: a 2xx, the batch is durable on the collector;
- :class:`Retry`: worth trying again: connection errors, timeouts, 408, 429 and 5xx, with the
  collector's ``Retry-After`` when it sent one;
- :class:`Rejected`: any other answer; trying again will not help.  ``keep`` says whether the
  batch is worth keeping in the spool (401/403/404: the token or URL is wrong and can be fixed;
  400/413/415/422: the batch itself is refused).
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

import httpx
import orjson

from pytest_testengine import __version__

RESULTS_PATH: Final = "/v1/results"
_KEEP_STATUSES: Final = frozenset({401, 403, 404, 405})
MAX_RETRY_AFTER: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    accepted: int | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    retry_after: float | None = None
    unreachable: bool = False  # no answer at all (connection error or timeout)


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    reason: str
    keep: bool  # worth spooling: the problem is the configuration, not the batch


Answer = Delivered | Retry | Rejected


@dataclass(frozen=True, slots=True)
class Reply:
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


def classify(status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Answer:
    """The meaning of one HTTP answer (pure)."""
    if 200 <= status < 300:
        try:
            accepted = orjson.loads(body).get("accepted")
        except (orjson.JSONDecodeError, AttributeError):
            accepted = None
        return Delivered(status, accepted if isinstance(accepted, int) else None)
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"), now=now)
        return Retry(f"the collector answered {status} ({_error_text(body)})", retry_after)
    return Rejected(
        status,
        f"the collector rejected the batch with {status} ({_error_text(body)})",
        keep=status in _KEEP_STATUSES,
    )


def describe_error(exc: httpx.TransportError, url: str) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"the collector at {url} did not answer in time ({type(exc).__name__})"
    detail = str(exc) or type(exc).__name__
    if "refused" in detail.lower():
        detail = "connection refused"
    return f"could not reach the collector at {url} ({detail})"


class Transport:
    """Posts encoded batches to one collector."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        compress: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.compress = compress
        self._token = token
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"Transport({self.url!r}, compress={self.compress})"

    def _open(self) -> httpx.Client:
        if self._client is None:
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"pytest-testengine/{__version__}",
            }
            if self.compress:
                headers["Content-Encoding"] = "gzip"
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            self._client = httpx.Client(
                base_url=self.url,
                headers=headers,
                timeout=self.timeout,
                # no TLS on http:// URLs: skip loading the CA bundle (tens of ms per run)
                transport=httpx.HTTPTransport(retries=0, verify=self.url.startswith("https:")),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                follow_redirects=False,
            )
        return self._client

    def post(self, body: bytes, *, timeout: float | None = None) -> Answer:
        """Post one JSON batch (``body`` uncompressed); ``timeout`` caps this attempt."""
        client = self._open()
        content = gzip.compress(body, compresslevel=5) if self.compress else body
        limit = self.timeout if timeout is None else max(0.05, min(timeout, self.timeout))
        try:
            response = client.post(RESULTS_PATH, content=content, timeout=limit)
        except httpx.TransportError as exc:
            return Retry(describe_error(exc, self.url), unreachable=True)
        return classify(response.status_code, response.headers, response.content, now=time.time())

    def call(self, path: str, payload: object, *, timeout: float | None = None) -> CallAnswer:
        """POST ``payload`` as JSON to ``path`` (the split plan endpoints) and read the JSON
        answer; like :meth:`post`, never raises for a network or HTTP problem."""
        client = self._open()
        body = orjson.dumps(payload)
        content = gzip.compress(body, compresslevel=5) if self.compress else body
        limit = self.timeout if timeout is None else max(0.05, min(timeout, self.timeout))
        try:
            response = client.post(path, content=content, timeout=limit)
        except httpx.TransportError as exc:
            return Retry(describe_error(exc, self.url), unreachable=True)
        status = response.status_code
        if 200 <= status < 300:
            try:
                return Reply(status, orjson.loads(response.content))
            except orjson.JSONDecodeError:
                return Rejected(status, f"the collector answered {status} without JSON", False)
        reason = f"the collector answered {status} to POST {path} ({_error_text(response.content)})"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"), now=time.time())
            return Retry(reason, retry_after)
        return Rejected(status, reason, keep=False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
