"""What a store writes per result: plain tuples, grouped by tenant and run.

The processor applies hundreds of thousands of results a second; building a frozen
:class:`~pytest_testengine.model.Result` and :class:`~pytest_testengine.model.Record` per
result costs more than the store write itself.  The write path takes :class:`RunRows`
instead: the results of one tenant and one run, each a :data:`Row` holding only what the
store indexes and counts, plus one JSON blob holding all of them as they arrived (what the
read API answers), so that no result is encoded again on its way to the store.

:func:`rows_of_checked` builds the rows of results that passed ``ingest.check_batch``
(exactly the wire format's fields, checked types: a body log entry, whose bytes are the
blob); :func:`rows_of_records` builds them from records (Kafka, the in-process handoff).
Both give the same rows and the same results for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import orjson

from collector_server.errors import RequestError
from collector_server.ingest import gunzip
from pytest_testengine.model import (
    OUTCOMES,
    RESULT_FIELDS,
    SCHEMA_VERSION,
    Record,
    Result,
    RunInfo,
    result_from_dict,
    run_from_dict,
)

#: (id, nodeid, file, outcome, duration, start, stop) of one result.
Row: TypeAlias = tuple[str, str, str, str, float, float, float]

_RESULT_KEYS: Final = frozenset(RESULT_FIELDS)
_NUMBERS: Final = (float, int)


@dataclass(frozen=True, slots=True)
class RunRows:
    """The results of one run of one tenant, as the store writes them: ``blob`` holds the
    result objects, in the order of ``rows`` (see :func:`results_in`)."""

    tenant: str
    run: RunInfo
    rows: Sequence[Row]
    blob: bytes


#: How a log entry that keeps a gzipped request body as it arrived starts: a JSON header line
#: (``{"v": 3, "tenant": ..., "run": {...}}``), then the gzip bytes (see
#: ``sinks.local.encode_body_entry``).
GZIP_ENTRY_PREFIX: Final = b'{"v":3,'
#: The same with the body's rows (:data:`Row`, a JSON array of arrays) on a line of their own
#: between the header and the gzip bytes: what ingest writes, so that the processor reads the
#: rows without decompressing and parsing the results (see ``sinks.local.decode_entry_rows``).
ROWS_ENTRY_PREFIX: Final = b'{"v":4,'
_TRUSTED_BYTES: Final = 1 << 31  # a body the collector accepted, so gunzipped once already


def is_gzip_entry(data: bytes) -> bool:
    """Whether ``data`` is a log entry holding a gzipped body (with its rows or without)."""
    return data.startswith(GZIP_ENTRY_PREFIX) or data.startswith(ROWS_ENTRY_PREFIX)


def split_gzip_entry(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, body) of a log entry starting with :data:`GZIP_ENTRY_PREFIX` or
    :data:`ROWS_ENTRY_PREFIX`; ValueError if it is malformed."""
    header, _, body = data.partition(b"\n")
    if header.startswith(ROWS_ENTRY_PREFIX):
        body = body.partition(b"\n")[2]  # past the rows
    try:
        plain = gunzip(body, _TRUSTED_BYTES)
    except RequestError as exc:  # damaged on disk: it was valid gzip when it was accepted
        raise ValueError(str(exc)) from exc
    return orjson.loads(header), orjson.loads(plain)


def results_in(blob: bytes) -> list[dict[str, Any]]:
    """The result objects of a :attr:`RunRows.blob`: a JSON array of results, or a body log
    entry kept as it is (``{"v": 2, ..., "batch": {"results": [...]}}``, or the gzipped
    body of :data:`GZIP_ENTRY_PREFIX` or :data:`ROWS_ENTRY_PREFIX`)."""
    if is_gzip_entry(blob):
        gzipped: list[dict[str, Any]] = split_gzip_entry(blob)[1]["results"]
        return gzipped
    obj = orjson.loads(blob)
    if type(obj) is list:
        return obj
    results: list[dict[str, Any]] = obj["batch"]["results"]
    return results


def blob_of(results: Sequence[Any]) -> bytes:
    """The blob of result dicts, :class:`Result` objects or results' JSON as received
    (``orjson.Fragment``, kept byte for byte): a JSON array."""
    return orjson.dumps(results, default=plain)


def plain(obj: object) -> Any:
    """orjson's ``default`` for results: a mapping (a result's tags) as a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


@runtime_checkable
class RowWriter(Protocol):
    """A store that writes rows (see :meth:`SqliteStore.write_rows`)."""

    def write_rows(
        self,
        groups: Sequence[RunRows],
        *,
        offsets: Mapping[str, int] | None = None,
        defer_statistics: bool = False,
    ) -> int: ...

    def flush_statistics(self) -> None: ...


def row_of(r: dict[str, Any]) -> Row:
    """The row of one result dict of the wire format (fields checked); KeyError if one is
    missing."""
    return (r["id"], r["nodeid"], r["file"], r["outcome"], r["duration"], r["start"], r["stop"])


def row_of_result(r: Result) -> Row:
    """The row of a result object (orjson encodes it in :func:`blob_of` as its fields in
    order, the keys and values of ``result_to_dict``)."""
    return (r.id, r.nodeid, r.file, r.outcome, r.duration, r.start, r.stop)


def rows_of_checked(results: Iterable[dict[str, Any]]) -> list[Row]:
    """Rows of results as parsed from a checked batch body (every field present and of its
    type: see ``ingest.check_batch``); raises KeyError if one is not."""
    return [row_of(r) for r in results]


def rows_of_records(records: Sequence[Record]) -> list[RunRows]:
    """The records as groups of rows: consecutive records of one tenant and run share one."""
    parts: list[tuple[str, RunInfo, list[Result]]] = []
    results: list[Result] = []
    tenant: str | None = None
    run: RunInfo | None = None
    for record in records:
        if record.tenant != tenant or (record.run is not run and record.run != run):
            tenant, run, results = record.tenant, record.run, []
            parts.append((tenant, run, results))
        results.append(record.result)
    return [
        RunRows(tenant, run, [row_of_result(r) for r in results], blob_of(results))
        for tenant, run, results in parts
    ]


def records_of_rows(groups: Iterable[RunRows]) -> list[Record]:
    """The records of groups of rows (for a store that takes records only)."""
    return [
        Record(g.tenant, g.run, result_from_dict(r)) for g in groups for r in results_in(g.blob)
    ]


#: decode_message of the Kafka consumer: (record, None), or (None, why it cannot be stored).
SlowDecode = Callable[[bytes | None], tuple[Record | None, str | None]]


def _plain_record(obj: Any) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(tenant, run, result) of a decoded Kafka record value that needs no other check than
    these: exactly the fields of a result, and what ``consumer.check_record`` checks; else
    None."""
    if type(obj) is not dict or obj.get("schema") != SCHEMA_VERSION:
        return None
    tenant, run = obj.get("tenant"), obj.get("run")
    r: Any = obj.get("result")  # a result dict once checked below
    if not (
        type(tenant) is str
        and tenant
        and type(run) is dict
        and type(run.get("run_id")) is str
        and run["run_id"]
        and type(run.get("suite")) is str
        and run["suite"]
        and _plain_result(r)
    ):
        return None
    return tenant, run, r


def _plain_result(r: Any) -> bool:
    """Whether a decoded result has exactly the fields of a result, of their types."""
    return bool(
        type(r) is dict
        and r.keys() == _RESULT_KEYS
        and type(r["id"]) is str
        and r["id"]
        and type(r["nodeid"]) is str
        and r["nodeid"]
        and type(r["outcome"]) is str
        and r["outcome"] in OUTCOMES
        and type(r["tags"]) is dict
        and type(r["setup"]) in _NUMBERS  # each time, spelled out: no generator per record
        and type(r["call"]) in _NUMBERS
        and type(r["teardown"]) in _NUMBERS
        and type(r["duration"]) in _NUMBERS
        and type(r["start"]) in _NUMBERS
        and type(r["stop"]) in _NUMBERS
    )


#: Where the result starts in a record value as ``model.encode_record`` and the Kafka sink
#: write it: ``{"schema":1,"tenant":...,"run":{...},"result":{...}}``.
_RESULT_AT: Final = b',"result":'


class _Head:
    """The bytes of a plain record value before its result, and what they decode to.

    The records of one batch share their tenant and run, so their values start with the same
    bytes: a value that starts with the head of the last plain value, and whose rest is one
    JSON object and a closing brace, decodes to that head's tenant and run and that object
    (the bytes of a head are kept only if its value decoded that way).  Only the result is
    parsed then, and its bytes go into the blob as they are."""

    __slots__ = ("data", "run", "tenant")

    def __init__(self) -> None:
        self.data = b""
        self.tenant = ""
        self.run: dict[str, Any] = {}

    def result_of(self, value: bytes) -> tuple[dict[str, Any], orjson.Fragment] | None:
        """(result, its bytes as an ``orjson.Fragment``: encoded as they are) of a value
        starting with this head, if it is plain; else None."""
        data = self.data
        if not data or not value.startswith(data) or value[-1:] != b"}":
            return None
        raw = value[len(data) : -1]
        try:
            r = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return (r, orjson.Fragment(raw)) if _plain_result(r) else None

    def learn(self, value: bytes, tenant: str, run: dict[str, Any], r: dict[str, Any]) -> None:
        """Keep the head of a plain value (decoded as ``tenant``, ``run``, ``r``)."""
        cut = value.find(_RESULT_AT)
        if cut < 0 or value[-1:] != b"}":
            return
        head = value[: cut + len(_RESULT_AT)]
        try:
            same = orjson.loads(value[len(head) : -1]) == r
        except orjson.JSONDecodeError:
            same = False
        if same:
            self.data, self.tenant, self.run = head, tenant, run


def rows_of_values(
    values: Sequence[bytes | None], slow: SlowDecode
) -> tuple[list[RunRows], list[tuple[int, str]]]:
    """The rows of Kafka record values (``model.encode_record``), in order, and the index and
    problem of each value that cannot be stored.  A value of the usual shape becomes a row
    straight from its JSON (only its result parsed when it starts like the one before, see
    :class:`_Head`); any other goes through ``slow`` (the consumer's decode_message), so it
    is accepted or refused exactly as before.  The run of a group is the first one seen for
    its (tenant, suite, run_id) in these values."""
    parts: list[tuple[str, RunInfo, list[Row], list[Any]]] = []
    problems: list[tuple[int, str]] = []
    runs: dict[tuple[str, str, str], RunInfo] = {}
    rows: list[Row] = []
    #: result dicts, Result objects and results' JSON (fragments), encoded once per group
    results: list[Any] = []
    current: tuple[str, str, str] | None = None
    loads = orjson.loads
    head = _Head()
    for i, value in enumerate(values):
        run_obj: dict[str, Any] | None = None
        decoded_run: RunInfo | None = None
        result: Any
        plain = None
        found = None if value is None else head.result_of(value)
        if found is not None:
            tenant, run_obj = head.tenant, head.run
            r, result = found
            key = (tenant, run_obj["suite"], run_obj["run_id"])
            row = row_of(r)
        else:
            if value is not None:
                try:
                    plain = _plain_record(loads(value))
                except orjson.JSONDecodeError:
                    plain = None
            if plain is not None:
                tenant, run_obj, r = plain
                key = (tenant, run_obj["suite"], run_obj["run_id"])
                if key not in runs:
                    try:
                        runs[key] = run_from_dict(run_obj)
                    except (TypeError, ValueError, KeyError):  # a run the shape check let by:
                        plain = None  # the slow path accepts or refuses the value
            if plain is not None:
                assert value is not None
                head.learn(value, tenant, plain[1], r)
                row, result = row_of(r), r
            else:
                record, problem = slow(value)
                if record is None:
                    problems.append((i, problem or "malformed"))
                    continue
                tenant, decoded_run = record.tenant, record.run
                key = (tenant, decoded_run.suite, decoded_run.run_id)
                row, result = row_of_result(record.result), record.result
        if key != current:
            run = runs.get(key)
            if run is None:
                run = runs[key] = decoded_run or run_from_dict(run_obj or {})
            current, rows, results = key, [], []
            parts.append((tenant, run, rows, results))
        rows.append(row)
        results.append(result)
    groups = [RunRows(t, run, rows, blob_of(results)) for t, run, rows, results in parts]
    return groups, problems
