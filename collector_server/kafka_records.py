"""The Kafka record of a result: key, value and headers, and its write-ahead log entry.

Format (see docs/kafka.md): key ``tenant/suite/nodeid`` (:attr:`Record.key`, so every
execution of a test lands in one partition), value :func:`model.encode_record` (JSON), headers
``schema`` (the wire-format version) and ``tenant``.  :func:`outgoing_of` builds the records of
a batch with the same bytes, faster.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import orjson
from confluent_kafka import Message

from collector_server.store.rows import plain
from pytest_testengine.model import (
    SCHEMA_VERSION,
    Record,
    Result,
    RunInfo,
    encode_record,
    record_key,
)

SCHEMA_HEADER: Final = "schema"
TENANT_HEADER: Final = "tenant"
_ENTRY_HEAD: Final = struct.Struct(">HI")  # WAL entry: tenant length, key length


class Outgoing(NamedTuple):
    """One Kafka record ready to produce (also what a WAL entry holds)."""

    tenant: str
    key: bytes
    value: bytes

    @classmethod
    def of(cls, record: Record) -> Outgoing:
        return cls(record.tenant, record.key.encode(), encode_record(record))

    def headers(self) -> list[tuple[str, str | bytes | None]]:
        return headers_of(self.tenant)

    def to_entry(self) -> bytes:
        tenant = self.tenant.encode()
        return _ENTRY_HEAD.pack(len(tenant), len(self.key)) + tenant + self.key + self.value

    @classmethod
    def from_entry(cls, entry: bytes) -> Outgoing:
        tenant_len, key_len = _ENTRY_HEAD.unpack_from(entry)
        start = _ENTRY_HEAD.size
        tenant = entry[start : start + tenant_len].decode()
        key = entry[start + tenant_len : start + tenant_len + key_len]
        return cls(tenant, key, entry[start + tenant_len + key_len :])

    @classmethod
    def from_message(cls, message: Message) -> Outgoing:
        """The record of a message the producer gave back (a failed delivery: delivery reports
        carry no headers, the tenant is read from the value)."""
        key, value = message.key(), message.value()
        data = value.encode() if isinstance(value, str) else (value or b"")
        try:
            tenant = str(orjson.loads(data)["tenant"])
        except (orjson.JSONDecodeError, KeyError, TypeError):  # not ours: never produced here
            tenant = ""
        return cls(tenant, key.encode() if isinstance(key, str) else (key or b""), data)


@functools.lru_cache(maxsize=1024)
def headers_of(tenant: str) -> list[tuple[str, str | bytes | None]]:
    """The headers of every record of ``tenant`` (shared, never changed)."""
    return [(SCHEMA_HEADER, str(SCHEMA_VERSION).encode()), (TENANT_HEADER, tenant.encode())]


_PLACEHOLDER = Result(id="", nodeid="", file="", name="", outcome="passed")
_RESULT_KEY = b'"result":'


def _head(tenant: str, run: RunInfo) -> bytes:
    """'{"schema":1,"tenant":..,"run":{..},"result":' of a record of ``run``: the record's
    encoding up to its result (the last '"result":': inside a JSON string the quote after
    result would be escaped)."""
    whole = encode_record(Record(tenant, run, _PLACEHOLDER))
    return whole[: whole.rindex(_RESULT_KEY) + len(_RESULT_KEY)]


def outgoing_of_checked(
    tenant: str, run: RunInfo, results: Sequence[Mapping[str, Any]]
) -> list[Outgoing]:
    """The records of a checked batch (results as parsed dicts with exactly the fields of
    :class:`Result`), without building a Result each; decoded, they equal ``outgoing_of``'s."""
    head, suite = _head(tenant, run), run.suite
    dumps = orjson.dumps
    return [
        Outgoing(
            tenant,
            record_key(tenant, suite, result["nodeid"]).encode(),
            head + dumps(result) + b"}",
        )
        for result in results
    ]


def outgoing_of(records: Sequence[Record]) -> list[Outgoing]:
    """``Outgoing.of`` of every record, byte for byte, with each run context encoded once (the
    records of one batch share it): ``encode_record`` spends most of its time on the run."""
    heads: dict[tuple[int, str], tuple[RunInfo, bytes]] = {}
    out: list[Outgoing] = []
    for record in records:
        run, tenant = record.run, record.tenant
        cached = heads.get((id(run), tenant))
        if cached is None:
            cached = (run, _head(tenant, run))
            heads[(id(run), tenant)] = cached  # holds the run, so its id is not reused
        # orjson encodes a dataclass as its fields in order: result_to_dict's keys and values
        value = cached[1] + orjson.dumps(record.result, default=plain) + b"}"
        out.append(Outgoing(tenant, record.key.encode(), value))
    return out
