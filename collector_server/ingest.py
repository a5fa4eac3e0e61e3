"""Validation of untrusted batches (``POST /v1/results``) into model objects.

Pure apart from zlib: bytes and header values in, a :class:`~pytest_testengine.model.Batch`
out, or an :class:`~collector_server.errors.IngestError` that names the field and the problem.
Plain Python checks (no schema library): this runs for every result the collector accepts.

Unknown keys are ignored, so a newer client can send fields an older collector does not know.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import orjson

from collector_server.errors import IngestError, type_name
from collector_server.settings import CollectorSettings
from pytest_testengine.model import (
    OUTCOMES,
    PHASES,
    RESULT_FIELDS,
    SCHEMA_VERSION,
    Batch,
    Result,
    RunInfo,
)

MAX_LINE: Final = 2**31 - 1
MAX_ATTEMPT: Final = 10_000
MAX_SHARDS: Final = 1_000_000
MAX_SECONDS: Final = 1e12  # a duration or an epoch timestamp; far beyond any real value
GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_RESULT_KEYS: Final = frozenset(RESULT_FIELDS)
_RESULT_WIDTH: Final = len(RESULT_FIELDS)

_RUN_OPTIONAL_TEXT: Final = (
    "build_id",
    "job_id",
    "branch",
    "commit",
    "pull_request",
    "build_url",
    "ci_provider",
    "plan_id",
)
_RUN_TEXT: Final = ("python_version", "os", "arch", "pytest_version", "plugin_version")


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_results: int = 10_000
    max_id: int = 128
    max_string: int = 4096
    max_message: int = 65_536
    max_tags: int = 64
    max_tag_key: int = 128
    max_tag_value: int = 1024

    @classmethod
    def from_settings(cls, settings: CollectorSettings) -> Limits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            max_results=settings.max_results_per_batch,
            max_id=settings.max_id_length,
            max_string=settings.max_string_length,
            max_message=settings.max_message_length,
            max_tags=settings.max_tags,
            max_tag_key=settings.max_tag_key_length,
            max_tag_value=settings.max_tag_value_length,
        )


# -- headers and body ------------------------------------------------------------------------


def check_content_type(value: str | None) -> None:
    """Accept ``application/json`` (optionally ``; charset=utf-8``); 415 otherwise."""
    media, _, params = (value or "").partition(";")
    if media.strip().lower() != "application/json":
        raise IngestError(
            415,
            "unsupported_media_type",
            f"[testengine] unsupported Content-Type {_show(value)}: expected application/json",
            "Content-Type",
        )
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            raise IngestError(
                415,
                "unsupported_charset",
                f"[testengine] unsupported charset in Content-Type {_show(value)}: expected utf-8",
                "Content-Type",
            )


def is_gzip(content_encoding: str | None) -> bool:
    """True for gzip, False for identity or no header; 415 for anything else."""
    value = (content_encoding or "identity").strip().lower()
    if value in {"gzip", "x-gzip"}:
        return True
    if value in {"identity", ""}:
        return False
    raise IngestError(
        415,
        "unsupported_encoding",
        f"[testengine] unsupported Content-Encoding {_show(content_encoding)}: "
        "expected gzip or identity",
        "Content-Encoding",
    )


def too_large(size: int, limit: int) -> IngestError:
    return IngestError(
        413,
        "body_too_large",
        f"[testengine] request body of {size} bytes or more is over the limit of {limit} "
        "bytes: send smaller batches (TESTENGINE_BATCH_SIZE) or raise "
        "TESTENGINE_COLLECTOR_MAX_BODY_BYTES on the collector",
        None,
    )


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (one or more members) without ever holding more than ``limit`` bytes."""
    out: list[bytes] = []
    total = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(GZIP_WBITS)
        pending = rest
        try:
            while True:
                chunk = inflater.decompress(pending, limit - total + 1)
                total += len(chunk)
                if total > limit:
                    raise IngestError(
                        413,
                        "decompressed_too_large",
                        f"[testengine] gzip body expands to more than the limit of {limit} "
                        "bytes: send smaller batches or raise "
                        "TESTENGINE_COLLECTOR_MAX_DECOMPRESSED_BYTES on the collector",
                        None,
                    )
                out.append(chunk)
                if inflater.eof:
                    break
                pending = inflater.unconsumed_tail
                if not pending and not chunk:
                    raise IngestError(
                        400,
                        "invalid_gzip",
                        "[testengine] gzip body is truncated: expected a complete gzip stream",
                        None,
                    )
        except zlib.error as exc:
            raise IngestError(
                400,
                "invalid_gzip",
                f"[testengine] body is not valid gzip ({exc}): send gzip with "
                "Content-Encoding: gzip, or plain JSON without it",
                None,
            ) from exc
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)


def parse_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise IngestError(
                400,
                "invalid_utf8",
                f"[testengine] body is not valid UTF-8 at byte {uexc.start}: expected UTF-8 JSON",
                None,
            ) from exc
        raise IngestError(
            400, "invalid_json", f"[testengine] body is not valid JSON: {exc}", None
        ) from exc


def parse_batch(
    body: bytes, *, content_type: str | None, content_encoding: str | None, limits: Limits
) -> Batch:
    """Headers and raw body (already bounded by max_body_bytes) to a validated Batch."""
    check_content_type(content_type)
    body = plain_body(body, is_gzip(content_encoding), limits.max_decompressed_bytes)
    return validate_batch(parse_json(body), limits)


def plain_body(body: bytes, gzipped: bool, limit: int) -> bytes:
    """The JSON bytes of a request body: gunzipped (never more than ``limit`` bytes), or
    checked against ``limit``."""
    if gzipped:
        return gunzip(body, limit)
    if len(body) > limit:
        raise too_large(len(body), limit)
    return body


# -- structure -------------------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(code: str, where: str, message: str) -> NoReturn:
    raise IngestError(422, code, f"[testengine] {message}", where)


def _wrong_type(where: str, value: object, expected: str) -> NoReturn:
    _fail("invalid_type", where, f"{where} is {type_name(value)}: expected {expected}")


def _text(obj: dict[str, Any], key: str, where: str, limit: int, required: bool) -> str:
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= limit:
        return value
    field = f"{where}.{key}" if where else key
    if value is None and key not in obj:
        if not required:
            return ""
        _fail("missing_field", field, f"missing required field {field}: expected a string")
    if type(value) is not str:
        _wrong_type(field, value, "a string")
    if not value:
        if not required:
            return value
        _fail("invalid_value", field, f"{field} is empty: expected a non-empty string")
    _fail(
        "too_long",
        field,
        f"{field} is {len(value)} characters long: expected at most {limit}",
    )


def _optional_text(obj: dict[str, Any], key: str, where: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is str and len(value) <= limit:
        return value
    return _text(obj, key, where, limit, False)


def _seconds(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key, 0.0)
    if (type(value) is float or type(value) is int) and 0 <= value <= MAX_SECONDS:
        return float(value)
    field = f"{where}.{key}"
    if type(value) is not float and type(value) is not int:
        _wrong_type(field, value, "a number of seconds")
    _fail(
        "invalid_value",
        field,
        f"invalid value {_show(value)} for {field}: expected seconds from 0 to {MAX_SECONDS:g}",
    )


def _int(obj: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is int and low <= value <= high:
        return value
    field = f"{where}.{key}"
    if type(value) is not int:
        _wrong_type(field, value, "an integer")
    _fail(
        "invalid_value",
        field,
        f"invalid value {value} for {field}: expected an integer from {low} to {high}",
    )


def _tags(obj: dict[str, Any], where: str, limits: Limits) -> dict[str, str]:
    tags = obj.get("tags")
    if tags is None:
        return {}
    field = f"{where}.tags"
    if type(tags) is not dict:
        _wrong_type(field, tags, "an object of string values")
    if len(tags) > limits.max_tags:
        _fail(
            "too_many_tags",
            field,
            f"{field} has {len(tags)} tags: expected at most {limits.max_tags}",
        )
    for name, value in tags.items():
        if not 0 < len(name) <= limits.max_tag_key:
            _fail(
                "too_long" if name else "invalid_value",
                field,
                f"tag name {_show(name)} in {field} has {len(name)} characters: expected "
                f"1 to {limits.max_tag_key}",
            )
        if type(value) is not str:
            _wrong_type(f"{field}.{name}", value, "a string")
        if len(value) > limits.max_tag_value:
            _fail(
                "too_long",
                f"{field}.{name}",
                f"value of tag {_show(name)} in {field} has {len(value)} characters: "
                f"expected at most {limits.max_tag_value}",
            )
    return tags


def _choice(
    obj: dict[str, Any], key: str, where: str, allowed: frozenset[str], required: bool
) -> Any:
    value = obj.get(key)
    if type(value) is str and value in allowed:
        return value
    field = f"{where}.{key}"
    if value is None:
        if not required:
            return None
        if key not in obj:
            _fail(
                "missing_field",
                field,
                f"missing required field {field}: expected one of {', '.join(sorted(allowed))}",
            )
    if type(value) is not str:
        _wrong_type(field, value, f"one of {', '.join(sorted(allowed))}")
    _fail(
        "invalid_value",
        field,
        f"unknown value {_show(value)} for {field}: expected one of {', '.join(sorted(allowed))}",
    )


def validate_run(obj: Any, limits: Limits) -> RunInfo:
    if type(obj) is not dict:
        if obj is None:
            _fail("missing_field", "run", "missing required field run: expected an object")
        _wrong_type("run", obj, "an object")
    lim = limits.max_string
    suite = "default" if obj.get("suite") is None else _text(obj, "suite", "run", lim, True)
    shard_index = _int(obj, "shard_index", "run", 0, MAX_SHARDS)
    shard_total = _int(obj, "shard_total", "run", 1, MAX_SHARDS)
    values: dict[str, Any] = {k: _optional_text(obj, k, "run", lim) for k in _RUN_OPTIONAL_TEXT}
    for key in _RUN_TEXT:
        values[key] = _text(obj, key, "run", lim, False)
    return RunInfo(
        run_id=_text(obj, "run_id", "run", limits.max_id, True),
        suite=suite,
        shard_index=shard_index,
        shard_total=shard_total,
        tags=_tags(obj, "run", limits),
        **values,
    )


def _tags_ok(tags: dict[str, Any], limits: Limits) -> bool:
    if len(tags) > limits.max_tags:
        return False
    max_key, max_value = limits.max_tag_key, limits.max_tag_value
    for name, value in tags.items():
        if not (0 < len(name) <= max_key and type(value) is str and len(value) <= max_value):
            return False
    return True


def _result_ok(obj: dict[str, Any], limits: Limits) -> bool:
    """The checks of one result, for the common, valid case (no objects built)."""
    g = obj.get
    lim = limits.max_string
    id_, nodeid, file, name = g("id"), g("nodeid"), g("file", ""), g("name", "")
    outcome, line, scope, params = g("outcome"), g("line"), g("scope", ""), g("params")
    when, message, worker, attempt = g("when"), g("message"), g("worker"), g("attempt", 1)
    setup, call, teardown = g("setup", 0.0), g("call", 0.0), g("teardown", 0.0)
    duration, start, stop, tags = g("duration", 0.0), g("start", 0.0), g("stop", 0.0), g("tags")
    return (
        type(id_) is str
        and 0 < len(id_) <= limits.max_id
        and type(nodeid) is str
        and 0 < len(nodeid) <= lim
        and type(file) is str
        and len(file) <= lim
        and type(name) is str
        and len(name) <= lim
        and type(outcome) is str
        and outcome in OUTCOMES
        and (line is None or (type(line) is int and 0 <= line <= MAX_LINE))
        and type(scope) is str
        and len(scope) <= lim
        and (params is None or (type(params) is str and len(params) <= lim))
        and (when is None or (type(when) is str and when in PHASES))
        and type(setup) is float
        and 0.0 <= setup <= MAX_SECONDS
        and type(call) is float
        and 0.0 <= call <= MAX_SECONDS
        and type(teardown) is float
        and 0.0 <= teardown <= MAX_SECONDS
        and type(duration) is float
        and 0.0 <= duration <= MAX_SECONDS
        and type(start) is float
        and 0.0 <= start <= MAX_SECONDS
        and type(stop) is float
        and 0.0 <= stop <= MAX_SECONDS
        and (message is None or (type(message) is str and len(message) <= limits.max_message))
        and (worker is None or (type(worker) is str and len(worker) <= lim))
        and type(attempt) is int
        and 1 <= attempt <= MAX_ATTEMPT
        and (tags is None or (type(tags) is dict and (not tags or _tags_ok(tags, limits))))
    )


def validate_result(obj: Any, where: str, limits: Limits) -> Result:
    """One result; a fast path for the common, valid case, then the checks that explain."""
    if type(obj) is dict and _result_ok(obj, limits):
        g = obj.get
        return Result(
            id=obj["id"],
            nodeid=obj["nodeid"],
            file=g("file", ""),
            name=g("name", ""),
            outcome=obj["outcome"],
            line=g("line"),
            scope=g("scope", ""),
            params=g("params"),
            when=g("when"),
            setup=g("setup", 0.0),
            call=g("call", 0.0),
            teardown=g("teardown", 0.0),
            duration=g("duration", 0.0),
            start=g("start", 0.0),
            stop=g("stop", 0.0),
            message=g("message"),
            worker=g("worker"),
            attempt=g("attempt", 1),
            tags=g("tags") or {},
        )
    return _validate_result_slowly(obj, where, limits)


def _validate_result_slowly(obj: Any, where: str, limits: Limits) -> Result:
    if type(obj) is not dict:
        _wrong_type(where, obj, "an object")
    lim = limits.max_string
    attempt = _int(obj, "attempt", where, 1, MAX_ATTEMPT)
    return Result(
        id=_text(obj, "id", where, limits.max_id, True),
        nodeid=_text(obj, "nodeid", where, lim, True),
        file=_text(obj, "file", where, lim, False),
        name=_text(obj, "name", where, lim, False),
        outcome=_choice(obj, "outcome", where, OUTCOMES, True),
        line=_int(obj, "line", where, 0, MAX_LINE),
        scope=_text(obj, "scope", where, lim, False),
        params=_optional_text(obj, "params", where, lim),
        when=_choice(obj, "when", where, PHASES, False),
        setup=_seconds(obj, "setup", where),
        call=_seconds(obj, "call", where),
        teardown=_seconds(obj, "teardown", where),
        duration=_seconds(obj, "duration", where),
        start=_seconds(obj, "start", where),
        stop=_seconds(obj, "stop", where),
        message=_optional_text(obj, "message", where, limits.max_message),
        worker=_optional_text(obj, "worker", where, lim),
        attempt=1 if attempt is None else attempt,
        tags=_tags(obj, where, limits),
    )


@dataclass(frozen=True, slots=True)
class Checked:
    """A batch whose results all passed the checks exactly as sent: every field of the wire
    format present, nothing else, tags an object.  The run is validated; the results stay
    in ``body`` (the decoded JSON text), which a sink may store as it is."""

    run: RunInfo
    body: bytes
    count: int
    #: The parsed results, each exactly the wire format's fields (a sink may encode them as
    #: they are, e.g. one Kafka record each).
    results: list[dict[str, Any]]


def check_batch(obj: Any, body: bytes, limits: Limits) -> Batch | Checked:
    """Like :func:`validate_batch`, without building a Result per result when every result
    is exactly what the plugin sends (then a :class:`Checked`); any other valid batch comes
    back as a :class:`Batch`, an invalid one raises as validate_batch does."""
    results = _batch_results(obj, limits)
    ok = _result_ok
    for r in results:
        if not (
            type(r) is dict
            and len(r) == _RESULT_WIDTH
            and r.keys() == _RESULT_KEYS
            and type(r["tags"]) is dict
            and ok(r, limits)
        ):
            return _validated(obj, results, limits)
    return Checked(validate_run(obj.get("run"), limits), body, len(results), results)


def validate_batch(obj: Any, limits: Limits) -> Batch:
    return _validated(obj, _batch_results(obj, limits), limits)


def _validated(obj: dict[str, Any], results: list[Any], limits: Limits) -> Batch:
    run = validate_run(obj.get("run"), limits)
    return Batch(
        run=run,
        results=[validate_result(r, f"results[{i}]", limits) for i, r in enumerate(results)],
    )


def _batch_results(obj: Any, limits: Limits) -> list[Any]:
    """The results array of a batch object, its schema, type and length checked."""
    if type(obj) is not dict:
        raise IngestError(
            422,
            "invalid_type",
            f"[testengine] body is {type_name(obj)}: expected a batch object "
            '{"schema": 1, "run": {...}, "results": [...]}',
            None,
        )
    schema = obj.get("schema")
    if schema != SCHEMA_VERSION or type(schema) is not int:
        if "schema" not in obj:
            _fail("missing_field", "schema", f"missing field schema: expected {SCHEMA_VERSION}")
        _fail(
            "unsupported_schema",
            "schema",
            f"unsupported schema {_show(schema)}: this collector reads schema "
            f"{SCHEMA_VERSION}; upgrade the collector or pin the plugin",
        )
    results = obj.get("results")
    if type(results) is not list:
        if results is None and "results" not in obj:
            _fail("missing_field", "results", "missing field results: expected an array")
        _wrong_type("results", results, "an array of results")
    if len(results) > limits.max_results:
        raise IngestError(
            413,
            "too_many_results",
            f"[testengine] batch has {len(results)} results: expected at most "
            f"{limits.max_results}; send smaller batches (TESTENGINE_BATCH_SIZE)",
            "results",
        )
    return results
