"""The collector's exceptions.

::

    CollectorError
     ├── SettingsError      a setting has an unusable value (CLI or env); exit 2
     ├── TokenError         a token store problem (unreadable file, bad tenant name)
     └── RequestError       a client sent something we refuse: answered as a 4xx JSON error
          └── IngestError   an invalid batch on POST /v1/results

``SinkUnavailable`` (in :mod:`collector_server.sinks`) is separate: it is not the client's
fault and is answered 503 with ``Retry-After``.

Every 4xx answer has one shape::

    {"error": {"code": "invalid_field", "message": "...", "field": "results[3].outcome"}}
"""

from __future__ import annotations

from typing import Any


class CollectorError(Exception):
    """Base of the collector's own errors."""


class SettingsError(CollectorError, ValueError):
    """A setting has a value that cannot be used."""


class TokenError(CollectorError):
    """The token store cannot be read or written, or a tenant name is invalid."""


class RequestError(CollectorError):
    """A request we refuse; ``status`` is a 4xx, ``field`` names the offending part or None."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class IngestError(RequestError):
    """An invalid batch; ``results`` is how many results it held, when that is known."""

    results: int | None = None


def type_name(value: object) -> str:
    """How an error message names a JSON value's type: \"an object\", \"null\", ..."""
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)
