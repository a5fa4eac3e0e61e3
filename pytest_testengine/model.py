"""The wire format shared by the plugin and the collector (pure: no pytest, no httpx).

A *batch* is what the plugin POSTs to ``/v1/results``::

    {"schema": 1, "run": {...RunInfo...}, "results": [{...Result...}, ...]}

A *record* is one result with its run context, the unit the collector forwards to Kafka
and the processor writes to the store::

    {"schema": 1, "tenant": "acme", "run": {...}, "result": {...}}

Encoding is plain JSON (orjson).  Decoding *trusted* data (our own records, the spool) goes
through :func:`result_from_dict` / :func:`run_from_dict`; untrusted input from the network is
validated first by ``collector_server.ingest``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import orjson

from pytest_testengine import SCHEMA_VERSION as SCHEMA_VERSION

Outcome = Literal["passed", "failed", "skipped", "xfailed", "xpassed", "error"]
OUTCOMES: Final[frozenset[str]] = frozenset(get_args(Outcome))

#: The phase a non-passing outcome came from; ``collect`` for collection errors.
Phase = Literal["setup", "call", "teardown", "collect"]
PHASES: Final[frozenset[str]] = frozenset(get_args(Phase))


def new_id() -> str:
    """A unique id for a result or a run (32 lowercase hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Result:
    """One execution of one test (one attempt)."""

    id: str
    nodeid: str
    file: str
    name: str
    outcome: Outcome
    line: int | None = None
    scope: str = ""  # class path inside the module, "" at module level
    params: str | None = None  # parametrize id, e.g. "1-a"
    when: Phase | None = None  # phase that decided a non-passing outcome
    setup: float = 0.0  # seconds per phase
    call: float = 0.0
    teardown: float = 0.0
    duration: float = 0.0  # setup + call + teardown
    start: float = 0.0  # epoch seconds
    stop: float = 0.0
    message: str | None = None  # failure text (truncated) or skip reason
    worker: str | None = None  # xdist worker id
    attempt: int = 1  # 1 for the first run, 2+ for reruns
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def test_id(self) -> str:
        """The stable identity of the test across runs (its node id)."""
        return self.nodeid


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The context of one pytest session: CI, host and versions, shared by its results."""

    run_id: str
    suite: str = "default"
    build_id: str | None = None
    job_id: str | None = None
    branch: str | None = None
    commit: str | None = None
    pull_request: str | None = None
    build_url: str | None = None
    ci_provider: str | None = None
    shard_index: int | None = None
    shard_total: int | None = None
    plan_id: str | None = None
    python_version: str = ""
    os: str = ""
    arch: str = ""
    pytest_version: str = ""
    plugin_version: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    run: RunInfo
    results: Sequence[Result]


@dataclass(frozen=True, slots=True)
class Record:
    """One result with its tenant and run context: one Kafka record, one store row."""

    tenant: str
    run: RunInfo
    result: Result

    @property
    def key(self) -> str:
        """Kafka key: every execution of a test lands in the same partition."""
        return record_key(self.tenant, self.run.suite, self.result.nodeid)


def record_key(tenant: str, suite: str, nodeid: str) -> str:
    """The Kafka key of a result: ``tenant/suite/nodeid``."""
    return f"{tenant}/{suite}/{nodeid}"


RESULT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Result))
RUN_FIELDS: Final = tuple(f.name for f in dataclasses.fields(RunInfo))


def _default(obj: object) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def result_to_dict(result: Result) -> dict[str, Any]:
    return {name: getattr(result, name) for name in RESULT_FIELDS}


def run_to_dict(run: RunInfo) -> dict[str, Any]:
    return {name: getattr(run, name) for name in RUN_FIELDS}


def result_from_dict(data: Mapping[str, Any]) -> Result:
    """Build a Result from trusted data (unknown keys are ignored)."""
    values = {k: data[k] for k in RESULT_FIELDS if k in data}
    values["tags"] = dict(values.get("tags") or {})
    return Result(**values)


def run_from_dict(data: Mapping[str, Any]) -> RunInfo:
    """Build a RunInfo from trusted data (unknown keys are ignored)."""
    values = {k: data[k] for k in RUN_FIELDS if k in data}
    values["tags"] = dict(values.get("tags") or {})
    return RunInfo(**values)


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "run": run_to_dict(batch.run),
        "results": [result_to_dict(r) for r in batch.results],
    }


def encode_batch(batch: Batch) -> bytes:
    return orjson.dumps(batch_to_dict(batch), default=_default)


def decode_batch(data: bytes) -> Batch:
    """Decode a batch from trusted bytes (our own spool); see ingest for untrusted input."""
    obj = orjson.loads(data)
    return Batch(
        run=run_from_dict(obj["run"]),
        results=tuple(result_from_dict(r) for r in obj["results"]),
    )


def encode_record(record: Record) -> bytes:
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            "tenant": record.tenant,
            "run": run_to_dict(record.run),
            "result": result_to_dict(record.result),
        },
        default=_default,
    )


def decode_record(data: bytes) -> Record:
    """Decode one record; raises ValueError/KeyError/TypeError on malformed data."""
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA_VERSION:
        raise ValueError("not a testengine record of schema version 1")
    return Record(
        tenant=str(obj["tenant"]),
        run=run_from_dict(obj["run"]),
        result=result_from_dict(obj["result"]),
    )


def records_of(tenant: str, batch: Batch) -> list[Record]:
    return [Record(tenant, batch.run, result) for result in batch.results]
