"""JSON responses of the collector's endpoints, and the one shape of every 4xx."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

from collector_server.errors import RequestError


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``body`` as JSON (bytes are taken as already encoded JSON)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(raw, status_code=status, headers=headers, media_type="application/json")


def error_response(error: RequestError) -> Response:
    """``{"error": {...}}`` with the error's status (401 says which scheme to use).

    The error lets go of its traceback: one raised in a worker thread (a large body is
    decoded there) came back through a future that the traceback refers to, a reference cycle
    that would keep the request's body and what was decoded of it until the garbage collector
    runs, which the collector's processes do seldom (see ``processor.settle_gc``)."""
    error.__traceback__ = None
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return json_response(error.to_dict(), error.status, headers)
