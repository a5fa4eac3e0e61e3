"""What a store writes per result: plain tuples, grouped by tenant and run.

The processor applies hundreds of thousands of results a second; building a frozen
:class:`~pytest_testengine.model.Result` and :class:`~pytest_testengine.model.Record` per
result costs more than the store write itself.  The write path takes :class:`RunRows`
instead: the results of one tenant and one run, each a :data:`Row` holding only what the
store reads, plus the result's JSON (the ``data`` column, answered as it is by the read API).

:func:`rows_of_checked` builds the rows of results that passed ``ingest.check_batch``
(exactly the wire format's fields, checked types: a body log entry);
:func:`rows_of_records` builds them from records (Kafka, the in-process handoff).
Both give the same rows for the same results, up to the key order of ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from pytest_testengine.model import Record, RunInfo, result_from_dict

#: (id, nodeid, file, outcome, duration, start, stop, data): data is the result's JSON object.
Row: TypeAlias = tuple[str, str, str, str, float, float, float, bytes]


@dataclass(frozen=True, slots=True)
class RunRows:
    """The results of one run of one tenant, as the store writes them."""

    tenant: str
    run: RunInfo
    rows: Sequence[Row]


def _plain(obj: object) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def rows_of_checked(results: Iterable[dict[str, Any]]) -> list[Row]:
    """Rows of results as parsed from a checked batch body (every field present and of its
    type: see ``ingest.check_batch``); raises KeyError if one is not."""
    dumps = orjson.dumps
    return [
        (
            r["id"],
            r["nodeid"],
            r["file"],
            r["outcome"],
            r["duration"],
            r["start"],
            r["stop"],
            dumps(r),
        )
        for r in results
    ]


def rows_of_records(records: Sequence[Record]) -> list[RunRows]:
    """The records as groups of rows: consecutive records of one tenant and run share one."""
    groups: list[RunRows] = []
    rows: list[Row] = []
    tenant: str | None = None
    run: RunInfo | None = None
    dumps = orjson.dumps
    for record in records:
        if record.tenant != tenant or (record.run is not run and record.run != run):
            tenant, run, rows = record.tenant, record.run, []
            groups.append(RunRows(tenant, run, rows))
        r = record.result
        # orjson encodes a dataclass as its fields in order: result_to_dict's keys and values
        rows.append(
            (
                r.id,
                r.nodeid,
                r.file,
                r.outcome,
                r.duration,
                r.start,
                r.stop,
                dumps(r, default=_plain),
            )
        )
    return groups


def records_of_rows(groups: Iterable[RunRows]) -> list[Record]:
    """The records of groups of rows (for a store that takes records only)."""
    return [
        Record(g.tenant, g.run, result_from_dict(orjson.loads(row[7])))
        for g in groups
        for row in g.rows
    ]
