"""The planner's endpoints and the validation of their untrusted bodies.

- ``POST /v1/plans``: the plan of a build's shards (made once, then cached);
- ``POST /v1/plans/{plan_id}/next``: the next chunk of a dynamic plan's queue;
- ``GET /v1/suites/{suite}/builds/{build_id}``: which plans a build used and what it ran.

Bodies are read, decoded and checked like ``POST /v1/results`` (same limits, same JSON error
shape naming the field); the work runs in a worker thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector_server import ingest
from collector_server.auth import Authenticator
from collector_server.errors import RequestError, type_name
from collector_server.planner import MODES, NextRequest, Planner, PlanRequest
from collector_server.responses import error_response, json_response
from collector_server.settings import CollectorSettings
from pytest_testengine.splitting import SPLIT_BY

MAX_BUILD_ID: Final = 256
MAX_SHARDS: Final = 1024
PLAN_ID_LENGTH: Final = 32
INLINE_BODY: Final = 64 * 1024  # larger or gzip bodies of /next are decoded in a worker thread

ReadBody = Callable[[Request], Awaitable[bytes]]


def _fail(status: int, code: str, field: str | None, message: str) -> NoReturn:
    raise RequestError(status, code, f"[testengine] {message}", field)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong_type(field: str, value: object, expected: str) -> NoReturn:
    _fail(422, "invalid_type", field, f"{field} is {type_name(value)}: expected {expected}")


def _missing(field: str, expected: str) -> NoReturn:
    _fail(422, "missing_field", field, f"missing required field {field}: expected {expected}")


def _text(obj: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= limit:
        return value
    if value is None and default is not None:
        return default
    if key not in obj:
        _missing(key, "a string")
    if type(value) is not str:
        _wrong_type(key, value, "a string")
    if not value:
        _fail(422, "invalid_value", key, f"{key} is empty: expected a non-empty string")
    _fail(422, "too_long", key, f"{key} is {len(value)} characters long: expected at most {limit}")


def _boolean(obj: dict[str, Any], key: str, *, default: bool) -> bool:
    value = obj.get(key, default)
    if type(value) is not bool:
        _wrong_type(key, value, "true or false")
    return bool(value)


def _integer(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if type(value) is int and low <= value <= high:
        return value
    if key not in obj:
        _missing(key, f"an integer from {low} to {high}")
    if type(value) is not int:
        _wrong_type(key, value, "an integer")
    _fail(
        422,
        "invalid_value",
        key,
        f"invalid value {value} for {key}: expected an integer from {low} to {high}",
    )


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = obj.get(key)
    if value is None:
        return allowed[0]
    if type(value) is str and value in allowed:
        return value
    expected = " or ".join(repr(a) for a in allowed)
    if type(value) is not str:
        _wrong_type(key, value, expected)
    _fail(422, "invalid_value", key, f"unknown value {_show(value)} for {key}: expected {expected}")


def _object(obj: Any) -> dict[str, Any]:
    if type(obj) is not dict:
        _fail(422, "invalid_type", None, f"the body is {type_name(obj)}: expected an object")
    return obj


def validate_plan_request(obj: Any, settings: CollectorSettings) -> PlanRequest:
    """A ``POST /v1/plans`` body, or a 4xx RequestError naming the field."""
    obj = _object(obj)
    suite = _text(obj, "suite", settings.max_string_length, "default")
    build_id = _text(obj, "build_id", MAX_BUILD_ID)
    total = _integer(obj, "total", 1, MAX_SHARDS)
    index = _integer(obj, "index", 0, MAX_SHARDS)
    if index >= total:
        _fail(
            422,
            "invalid_value",
            "index",
            f"invalid value {index} for index: expected an integer from 0 to {total - 1} "
            f"(the shard's 0-based index, below total {total})",
        )
    by = _choice(obj, "by", SPLIT_BY)
    mode = _choice(obj, "mode", MODES)
    tests = obj.get("tests")
    if type(tests) is not list:
        if "tests" not in obj:
            _missing("tests", "an array of node ids")
        _wrong_type("tests", tests, "an array of node ids")
    if not tests:
        _fail(422, "invalid_value", "tests", "tests is empty: expected the collected node ids")
    limit = settings.max_plan_tests
    if len(tests) > limit:
        _fail(
            413,
            "too_many_tests",
            "tests",
            f"tests has {len(tests)} node ids: expected at most {limit} (raise "
            "TESTENGINE_COLLECTOR_MAX_PLAN_TESTS on the collector)",
        )
    longest = settings.max_string_length
    if not all(type(t) is str and 0 < len(t) <= longest for t in tests):
        for position, test in enumerate(tests):
            field = f"tests[{position}]"
            if type(test) is not str:
                _wrong_type(field, test, "a node id string")
            if not test:
                _fail(422, "invalid_value", field, f"{field} is empty: expected a node id")
            if len(test) > longest:
                _fail(
                    422,
                    "too_long",
                    field,
                    f"{field} is {len(test)} characters long: expected at most {longest}",
                )
    if len(set(tests)) != len(tests):
        seen: set[str] = set()
        for position, test in enumerate(tests):
            if test in seen:
                _fail(
                    422,
                    "duplicate_test",
                    f"tests[{position}]",
                    f"node id {_show(test)} is in tests more than once (again at "
                    f"tests[{position}]): expected each collected test once",
                )
            seen.add(test)
    return PlanRequest(
        suite=suite, build_id=build_id, total=total, index=index, by=by, mode=mode, tests=tests
    )


def _chunk_ids(obj: dict[str, Any], key: str) -> list[int]:
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        _wrong_type(key, value, "an array of chunk ids")
    for position, chunk_id in enumerate(value):
        if type(chunk_id) is not int:
            _wrong_type(f"{key}[{position}]", chunk_id, "an integer chunk id")
    return value


def validate_next_request(obj: Any) -> NextRequest:
    """A ``POST /v1/plans/{plan_id}/next`` body (chunk ids are checked against the plan later)."""
    obj = _object(obj)
    return NextRequest(
        index=_integer(obj, "index", 0, MAX_SHARDS),
        completed=_chunk_ids(obj, "completed"),
        holding=_chunk_ids(obj, "holding"),
        take=_boolean(obj, "take", default=True),
    )


class PlannerApi:
    """The planner's endpoints, bound to one app's authenticator and body reader."""

    def __init__(
        self,
        settings: CollectorSettings,
        planner: Planner,
        auth: Authenticator,
        read_body: ReadBody,
    ) -> None:
        self.settings = settings
        self.planner = planner
        self.auth = auth
        self.read_body = read_body
        self.limits = ingest.Limits.from_settings(settings)

    async def _body(self, request: Request) -> tuple[bytes, bool]:
        """The raw body (bounded by max_body_bytes) and whether it is gzip-encoded."""
        headers = request.headers
        ingest.check_content_type(headers.get("content-type"))
        gzipped = ingest.is_gzip(headers.get("content-encoding"))
        return await self.read_body(request), gzipped

    def _decode(self, body: bytes, gzipped: bool) -> Any:
        return ingest.parse_json(
            ingest.plain_body(body, gzipped, self.limits.max_decompressed_bytes)
        )

    async def post_plan(self, request: Request) -> Response:
        try:
            tenant = self.auth.authenticate(request.headers.get("authorization"))
            body, gzipped = await self._body(request)
            plan = await run_in_threadpool(self._plan, tenant, body, gzipped)
        except RequestError as exc:
            return error_response(exc)
        return json_response(plan)

    def _plan(self, tenant: str, body: bytes, gzipped: bool) -> bytes:
        """Decode, check and answer a plan request (in a worker thread: bodies can be MBs)."""
        request = validate_plan_request(self._decode(body, gzipped), self.settings)
        return self.planner.plan(tenant, request)

    async def post_next(self, request: Request) -> Response:
        plan_id = request.path_params["plan_id"]
        try:
            tenant = self.auth.authenticate(request.headers.get("authorization"))
            if len(plan_id) != PLAN_ID_LENGTH:
                raise RequestError(
                    404,
                    "plan_not_found",
                    f"[testengine] no plan {plan_id[:40]!r}: plan ids are {PLAN_ID_LENGTH} "
                    "hex digits from POST /v1/plans",
                    "plan_id",
                )
            body, gzipped = await self._body(request)
            if gzipped or len(body) > INLINE_BODY:
                obj = await run_in_threadpool(self._decode, body, gzipped)
            else:
                obj = self._decode(body, gzipped)
            next_request = validate_next_request(obj)
            answer = await run_in_threadpool(self.planner.next, tenant, plan_id, next_request)
        except RequestError as exc:
            return error_response(exc)
        return json_response(answer)

    async def get_build(self, request: Request) -> Response:
        suite, build_id = request.path_params["suite"], request.path_params["build_id"]
        try:
            tenant = self.auth.authenticate(request.headers.get("authorization"))
            report = await run_in_threadpool(self.planner.build, tenant, suite, build_id)
            if report is None:
                raise RequestError(
                    404,
                    "build_not_found",
                    f"[testengine] build {build_id[:80]!r} of suite {suite[:80]!r} has neither "
                    "plans nor results for this token's tenant",
                    "build_id",
                )
        except RequestError as exc:
            return error_response(exc)
        return json_response(report)
