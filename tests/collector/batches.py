"""Batches for collector tests."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson

from pytest_testengine.model import Batch, Result, RunInfo, batch_to_dict, new_id

JSON = {"Content-Type": "application/json"}
GZIP_JSON = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


def result(i: int = 0, **fields: Any) -> Result:
    values: dict[str, Any] = {
        "id": new_id(),
        "nodeid": f"tests/test_a.py::test_{i}",
        "file": "tests/test_a.py",
        "name": f"test_{i}",
        "outcome": "passed",
        "line": i,
        "call": 0.5,
        "duration": 0.5,
        "start": 1_700_000_000.0 + i,
        "stop": 1_700_000_000.5 + i,
        "tags": {"team": "core"},
    }
    values.update(fields)
    return Result(**values)


def batch(n: int = 3, *, suite: str = "default", run_id: str | None = None, **fields: Any) -> Batch:
    run = RunInfo(run_id=run_id or new_id(), suite=suite, branch="main", tags={"ci": "yes"})
    return Batch(run, [result(i, **fields) for i in range(n)])


def body(b: Batch) -> dict[str, Any]:
    """A batch as a mutable JSON object."""
    return orjson.loads(orjson.dumps(batch_to_dict(b), default=dict))  # type: ignore[no-any-return]


def encode(obj: Any, *, compress: bool = False) -> bytes:
    data = orjson.dumps(obj, default=dict)
    return gzip.compress(data) if compress else data


def gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes (about size/1000 bytes long), made in no time: one
    compressed MiB after a full flush is self-contained, so it is repeated (no trailer: the
    collector must stop long before the end)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    mib = b"\0" * (1 << 20)
    head = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + block * ((size >> 20) - 1)
