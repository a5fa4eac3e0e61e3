"""Load for the collector: realistic batches, and a cheap HTTP/1.1 client that posts them.

The client keeps one keep-alive connection per concurrent client and writes requests that
were built before the clock starts, so nearly all the CPU it uses is the kernel's: the
collector, not the load generator, is what is measured.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

OUTCOMES = ("passed",) * 95 + ("failed", "failed", "skipped", "skipped", "error")


def results(count: int, *, run: int, start: float) -> list[dict[str, Any]]:
    """``count`` results shaped like the plugin's (unique ids; 5% failing or skipped)."""
    prefix = os.urandom(6).hex()
    out: list[dict[str, Any]] = []
    for i in range(count):
        f, t = divmod(i, 25)
        outcome = OUTCOMES[i % len(OUTCOMES)]
        # 50 shards of one 25,000-test suite: every test comes back run after run
        nodeid = f"tests/unit/test_mod_{run % 50:02d}_{f:03d}.py::test_case[{t}]"
        call = 0.0005 + (i % 17) * 0.0001
        out.append(
            {
                "id": f"{prefix}{run:08x}{i:06x}",
                "nodeid": nodeid,
                "file": nodeid.split("::", 1)[0],
                "name": "test_case",
                "outcome": outcome,
                "line": 12 + t,
                "scope": "",
                "params": str(t),
                "when": None if outcome == "passed" else "call",
                "setup": 0.0001,
                "call": call,
                "teardown": 0.0001,
                "duration": call + 0.0002,
                "start": start + i * 0.001,
                "stop": start + i * 0.001 + call + 0.0002,
                "message": None if outcome == "passed" else "assert 1 == 2\n  where ...",
                "worker": None,
                "attempt": 1,
                "tags": {},
            }
        )
    return out


def run_info(run: int) -> dict[str, Any]:
    return {
        "run_id": f"{os.urandom(8).hex()}{run:08x}",
        "suite": "bench",
        "build_id": f"build-{run // 8}",
        "job_id": f"job-{run}",
        "branch": "main",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "ci_provider": "buildkite",
        "shard_index": run % 8,
        "shard_total": 8,
        "python_version": "3.11.7",
        "os": "linux",
        "arch": "x86_64",
        "pytest_version": "9.2.0",
        "plugin_version": "0.1.0",
        "tags": {"ci.provider": "buildkite"},
    }


def body(batch_size: int, run: int, *, compress: bool = True) -> bytes:
    data = orjson.dumps(
        {
            "schema": 1,
            "run": run_info(run),
            "results": results(batch_size, run=run, start=time.time()),
        }
    )
    return gzip.compress(data, compresslevel=6) if compress else data


def request(host: str, port: int, payload: bytes, *, compress: bool = True) -> bytes:
    head = (
        f"POST /v1/results HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        + ("Content-Encoding: gzip\r\n" if compress else "")
        + f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


@dataclass
class LoadResult:
    results: int  # accepted (202)
    batches: int
    rejected: int
    seconds: float
    latencies: list[float]  # seconds per POST

    @property
    def rate(self) -> float:
        return self.results / self.seconds if self.seconds else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


_runs = itertools.count()


def prepare(host: str, port: int, batches: int, batch_size: int) -> list[bytes]:
    return [request(host, port, body(batch_size, next(_runs))) for _ in range(batches)]


def post_all(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    clients: int,
    batch_size: int,
    rate: float | None = None,
) -> LoadResult:
    """Post every request, ``clients`` at a time, each on its own keep-alive connection: as
    fast as they are answered, or paced at ``rate`` results per second (request k is sent
    when it is due, k * batch_size / rate seconds after the start, or as soon as a client is
    free if they fall behind)."""
    feed = iter(enumerate(requests))
    latencies: list[float] = []
    counts = {"ok": 0, "bad": 0}

    async def client(start: float) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index, req in feed:
                if rate:  # request ``index`` is due this long after the start
                    due = start + index * batch_size / rate - time.perf_counter()
                    if due > 0:
                        await asyncio.sleep(due)
                sent = time.perf_counter()
                writer.write(req)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - sent)
                counts["ok" if status == 202 else "bad"] += 1
        finally:
            writer.close()

    async def post() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(start) for _ in range(clients)))
        return time.perf_counter() - start

    seconds = asyncio.run(post())
    return LoadResult(counts["ok"] * batch_size, counts["ok"], counts["bad"], seconds, latencies)
