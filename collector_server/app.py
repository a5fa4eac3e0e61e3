"""The collector's HTTP app: ``create_app(settings, *, sink=None, store=None) -> Starlette``.

Parts not given are built from the settings by :func:`build_sink` and :func:`build_store`, the
one place that chooses them.  The app owns every part it is given or builds: its lifespan opens
and starts them and closes them on shutdown.  With a :class:`LocalLogSink` the app also runs a
:class:`LocalProcessor` that applies the log to the store.

The routes table is at the bottom of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from collector_server import ingest
from collector_server.auth import Authenticator, TokenStore
from collector_server.consumer import processor_consumer
from collector_server.consumer_child import ConsumerChild, ConsumerThread
from collector_server.errors import IngestError, RequestError
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.metrics import CONTENT_TYPE, Metrics
from collector_server.planner import Planner
from collector_server.planner_api import PlannerApi
from collector_server.processor import LocalProcessor
from collector_server.processor_child import ChildProcessor
from collector_server.responses import error_response, json_response
from collector_server.settings import CollectorSettings
from collector_server.sinks import Sink, SinkUnavailable
from collector_server.sinks.kafka import KafkaSink, kafka_sink
from collector_server.sinks.local import LOG_FILE, LocalLogSink
from collector_server.store import InvalidCursor, Page, Store
from collector_server.store.sqlite import STORE_FILE, SqliteStore
from pytest_testengine.model import Batch, records_of

log = logging.getLogger("testengine.collector")

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 100_000
INLINE_BODY: Final = 256 * 1024  # larger bodies are decoded in a worker thread

Endpoint = Callable[[Request], Awaitable[Response]]


# -- parts -----------------------------------------------------------------------------------


def build_sink(settings: CollectorSettings) -> Sink:
    """The sink the settings ask for: Kafka when ``kafka_bootstrap`` is set (the topic is
    created with ``kafka_partitions`` when missing), else the embedded local log."""
    if settings.kafka_bootstrap:
        return kafka_sink(settings)
    return LocalLogSink(settings.data_dir / LOG_FILE)


def build_store(settings: CollectorSettings) -> Store:
    """The store the settings ask for (opened by the app's lifespan)."""
    return SqliteStore(settings.data_dir / STORE_FILE)


@dataclass
class Parts:
    sink: Sink
    store: Store
    processor: LocalProcessor | ChildProcessor | None = None
    planner: Planner | None = None  # plans and dynamic queues (plans.db)
    consumer: ConsumerThread | ConsumerChild | None = None  # Kafka mode: the processor
    started: bool = False

    async def start(self, settings: CollectorSettings, metrics: Metrics) -> None:
        if isinstance(self.store, SqliteStore) and not self.store.is_open:
            await run_in_threadpool(self.store.open)
        if self.planner is not None:
            await run_in_threadpool(self.planner.open)
        if isinstance(self.sink, KafkaSink):
            self._start_kafka(settings, metrics, self.sink)
        await self.sink.start()
        if isinstance(self.sink, LocalLogSink):
            if settings.processor_process and isinstance(self.store, SqliteStore):
                self.processor = ChildProcessor(  # its own process: ingest keeps a core
                    self.sink.log,
                    self.store.path,
                    batch_records=settings.processor_batch,
                    linger=settings.processor_linger,
                    on_applied=metrics.on_applied,
                )
            else:
                self.processor = LocalProcessor(
                    self.sink.log,
                    self.store,
                    batch_records=settings.processor_batch,
                    linger=settings.processor_linger,
                    on_applied=metrics.on_applied,
                )
            await run_in_threadpool(self.processor.start)
            # both read checked bodies from the log: no Result objects on the ingest path
            self.sink.subscribe(self.processor.on_commit, records=False)
            metrics.watch_lag(lambda: self.processor.lag if self.processor else 0)
        self.started = True

    def _start_kafka(self, settings: CollectorSettings, metrics: Metrics, sink: KafkaSink) -> None:
        """Kafka metrics on the app's /metrics; the in-process processor unless turned off."""
        if sink.metrics is None:
            sink.metrics = KafkaMetrics(metrics.registry)
        if settings.processor and self.consumer is None:
            if settings.processor_process and isinstance(self.store, SqliteStore):
                self.consumer = ConsumerChild(  # its own process: ingest keeps a core
                    settings, metrics=sink.metrics, on_applied=metrics.on_applied
                )
            else:
                consumer = processor_consumer(
                    settings, self.store, metrics=sink.metrics, on_applied=metrics.on_applied
                )
                self.consumer = ConsumerThread(consumer)
            self.consumer.start()
            metrics.watch_lag(lambda: self.consumer.lag if self.consumer else 0)

    async def close(self) -> None:
        """Stop the processor (what it has not applied yet is applied after a restart), then
        close the sink and the store."""
        self.started = False
        try:
            if self.processor is not None:
                await run_in_threadpool(self.processor.stop)
            if self.consumer is not None:
                await run_in_threadpool(self.consumer.stop)
            await self.sink.close()
        finally:
            await run_in_threadpool(self.store.close)
            if self.planner is not None:
                await run_in_threadpool(self.planner.close)

    def status(self) -> tuple[bool, dict[str, Any]]:
        sink = self.sink.status()
        ready = self.started and bool(sink.get("ready"))
        body: dict[str, Any] = {"sink": sink}
        if self.processor is not None:
            body["processor"] = self.processor.status()
            ready = ready and bool(body["processor"]["running"])
        if self.consumer is not None:
            body["processor"] = self.consumer.status()
            ready = ready and bool(body["processor"]["running"])
        body["status"] = "ready" if ready else "unavailable"
        return ready, body


# -- responses -------------------------------------------------------------------------------


def page_response(page: Page) -> Response:
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


def query_paging(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise RequestError(
                400,
                "invalid_limit",
                f"[testengine] invalid limit {raw[:40]!r}: expected an integer from 1 to "
                f"{MAX_LIMIT}",
                "limit",
            )
    return limit, request.query_params.get("cursor") or None


# -- handlers --------------------------------------------------------------------------------


class Collector:
    """The endpoints, bound to the parts of one app."""

    def __init__(self, settings: CollectorSettings, parts: Parts) -> None:
        self.settings = settings
        self.parts = parts
        self.limits = ingest.Limits.from_settings(settings)
        self.auth = Authenticator(TokenStore(settings.data_dir), allow_open=settings.is_loopback)
        self.metrics = Metrics()
        if parts.planner is None:
            parts.planner = Planner.from_settings(settings, parts.store)
        self.plans = PlannerApi(settings, parts.planner, self.auth, self._read_body)

    def instrumented(self, route: str, endpoint: Endpoint) -> Endpoint:
        requests, latency = self.metrics.requests, self.metrics.latency.labels(route)

        async def timed(request: Request) -> Response:
            start = time.perf_counter()
            response = await endpoint(request)
            latency.observe(time.perf_counter() - start)
            requests.labels(route, request.method, str(response.status_code)).inc()
            return response

        return timed

    async def post_results(self, request: Request) -> Response:
        try:
            tenant = self.auth.authenticate(request.headers.get("authorization"))
            headers = request.headers
            ingest.check_content_type(headers.get("content-type"))
            gzipped = ingest.is_gzip(headers.get("content-encoding"))
            body = await self._read_body(request)
            sink = self.parts.sink
            # the local log without an in-process processor stores checked bodies as they are;
            # Kafka encodes checked results as they are
            bodies = isinstance(sink, KafkaSink) or (
                isinstance(sink, LocalLogSink) and sink.takes_bodies
            )
            if len(body) > INLINE_BODY:
                batch = await run_in_threadpool(self._decode, body, gzipped, bodies)
            else:
                batch = self._decode(body, gzipped, bodies)
            if isinstance(batch, ingest.Checked):
                accepted = batch.count
                if accepted and isinstance(sink, LocalLogSink):
                    wire = body if gzipped else None  # kept gzipped, as it came
                    await sink.publish_body(tenant, batch.run, batch.body, wire, batch.results)
                elif accepted and isinstance(sink, KafkaSink):
                    await sink.publish_checked(tenant, batch.run, batch.results)
            else:
                accepted = len(batch.results)
                if accepted:
                    await sink.publish(records_of(tenant, batch))
        except RequestError as exc:
            self.metrics.batches_rejected.labels(exc.code).inc()
            if isinstance(exc, IngestError) and exc.results:
                self.metrics.results_rejected.labels(exc.code).inc(exc.results)
            return error_response(exc)
        except SinkUnavailable as exc:
            exc.__traceback__ = None  # it came through a future: see error_response
            self.metrics.batches_rejected.labels("sink_unavailable").inc()
            retry = max(1, round(exc.retry_after or self.settings.retry_after))
            return json_response(
                {"error": {"code": "sink_unavailable", "message": str(exc), "field": None}},
                503,
                {"Retry-After": str(retry)},
            )
        self.metrics.results_accepted.inc(accepted)
        self.metrics.batch_size.observe(accepted)
        return json_response({"accepted": accepted}, 202)

    def _decode(self, body: bytes, gzipped: bool, bodies: bool = False) -> Batch | ingest.Checked:
        limits = self.limits
        body = ingest.plain_body(body, gzipped, limits.max_decompressed_bytes)
        obj = ingest.parse_json(body)
        results = obj.get("results") if type(obj) is dict else None
        count = len(results) if type(results) is list else None
        try:
            if bodies:
                return ingest.check_batch(obj, body, limits)
            return ingest.validate_batch(obj, limits)
        except IngestError as exc:
            exc.results = count
            raise

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ingest.too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ingest.too_large(size, limit)
                chunks.append(chunk)
        except ClientDisconnect as exc:
            raise RequestError(
                400, "client_disconnected", "[testengine] the client went away", None
            ) from exc
        return b"".join(chunks)

    async def _read(self, request: Request, call: Callable[..., Page], *args: Any) -> Response:
        try:
            tenant = self.auth.authenticate(request.headers.get("authorization"))
            limit, cursor = query_paging(request)
            try:
                page = await run_in_threadpool(call, tenant, *args, limit=limit, cursor=cursor)
            except InvalidCursor as exc:
                raise RequestError(
                    400,
                    "invalid_cursor",
                    f"[testengine] {exc}: pass the next_cursor of the previous page",
                    "cursor",
                ) from exc
        except RequestError as exc:
            return error_response(exc)
        return page_response(page)

    async def list_suites(self, request: Request) -> Response:
        return await self._read(request, self.parts.store.suites)

    async def list_tests(self, request: Request) -> Response:
        suite = request.path_params["suite"]
        return await self._read(request, self.parts.store.tests, suite)

    async def list_runs(self, request: Request) -> Response:
        suite = request.path_params["suite"]
        return await self._read(request, self.parts.store.runs, suite)

    async def list_results(self, request: Request) -> Response:
        suite = request.path_params["suite"]
        run_id = request.query_params.get("run_id") or None

        def results(tenant: str, suite: str, *, limit: int, cursor: str | None) -> Page:
            return self.parts.store.results(
                tenant, suite, run_id=run_id, limit=limit, cursor=cursor
            )

        return await self._read(request, results, suite)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready, body = self.parts.status()
        return json_response(body, 200 if ready else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        self.metrics.requests.labels("unmatched", request.method, str(exc.status_code)).inc()
        error = RequestError(
            exc.status_code,
            code,
            f"[testengine] {exc.detail}: {request.method} {request.url.path}; see "
            "docs/collector-api.md for the endpoints",
        )
        return error_response(error)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("[testengine] internal error on %s %s", request.method, request.url.path)
        return json_response(
            {
                "error": {
                    "code": "internal",
                    "message": "[testengine] internal error",
                    "field": None,
                }
            },
            500,
        )


def create_app(
    settings: CollectorSettings, *, sink: Sink | None = None, store: Store | None = None
) -> Starlette:
    parts = Parts(
        sink=build_sink(settings) if sink is None else sink,
        store=build_store(settings) if store is None else store,
    )
    collector = Collector(settings, parts)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await parts.start(settings, collector.metrics)
        try:
            yield
        finally:
            await asyncio.shield(parts.close())

    app = Starlette(
        routes=routes(collector),
        lifespan=lifespan,
        exception_handlers={HTTPException: collector.http_error, Exception: collector.server_error},
    )
    app.state.collector = collector
    return app


# -- routes ----------------------------------------------------------------------------------


def routes(c: Collector) -> list[Route]:
    def route(path: str, endpoint: Endpoint, name: str, method: str = "GET") -> Route:
        return Route(path, c.instrumented(name, endpoint), methods=[method], name=name)

    return [
        route("/v1/results", c.post_results, "post_results", "POST"),
        route("/v1/suites", c.list_suites, "suites"),
        route("/v1/suites/{suite:path}/tests", c.list_tests, "tests"),
        route("/v1/suites/{suite:path}/runs", c.list_runs, "runs"),
        route("/v1/suites/{suite:path}/results", c.list_results, "results"),
        route("/v1/suites/{suite:path}/builds/{build_id:path}", c.plans.get_build, "build"),
        route("/v1/plans", c.plans.post_plan, "post_plan", "POST"),
        route("/v1/plans/{plan_id}/next", c.plans.post_next, "plan_next", "POST"),
        route("/healthz", c.healthz, "healthz"),
        route("/readyz", c.readyz, "readyz"),
        route("/metrics", c.metrics_text, "metrics"),
    ]
