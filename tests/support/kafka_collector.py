"""Helpers of the Kafka-mode tests of the real commands: clients POSTing batches to a collector
in threads, ``testengine-collector process`` subprocesses, and reading the SQLite store they
write.

::

    with Poster(collector.url, clients=4) as poster:
        assert poster.wait_accepted(500, timeout=20)
    member = ProcessMember(bootstrap, topic, data_dir, log).start()
    member.terminate()   # SIGTERM; member.summary() has its consumed/new counts
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx
from confluent_kafka import Consumer, TopicPartition

from collector_server.auth import DEFAULT_TENANT
from collector_server.kafka_admin import client_config
from collector_server.store.sqlite import STORE_FILE, SqliteStore
from pytest_testengine.model import Batch, encode_batch
from tests.collector.batches import batch
from tests.support.collector import CollectorProcess, collector_env
from tests.support.kafka_io import wait_until

ROOT: Final = Path(__file__).resolve().parents[2]
SUITE: Final = "kafka"
MAX_BATCHES: Final = 2000  # per client: every loop is bounded
#: Fast failover and fast failure detection for tests (librdkafka settings for every client).
FAST: Final = (
    "session.timeout.ms=6000",
    "heartbeat.interval.ms=500",
    "message.timeout.ms=2000",
)
STOPPED = re.compile(r"processor stopped: (\d+) records consumed \((\d+) new\), (\d+) malformed")


def kafka_args(bootstrap: str | None, topic: str, *extra: str, partitions: int = 3) -> list[str]:
    """Command-line flags for a Kafka-mode collector or processor of ``topic`` (no bootstrap:
    the caller passes it in the environment)."""
    args = ["--kafka-bootstrap", bootstrap] if bootstrap else []
    args += ["--kafka-topic", topic, "--kafka-partitions", str(partitions)]
    args += ["--kafka-group", group_of(topic)]
    for option in FAST:
        args += ["--kafka-option", option]
    return [*args, *extra]


def group_of(topic: str) -> str:
    """Every test its own consumer group (a member killed by one test cannot slow the next)."""
    return topic + ".processors"


def make_batch(size: int, suite: str = SUITE) -> Batch:
    return batch(size, suite=suite)


class Poster:
    """``clients`` threads POSTing batches until stopped (or the collector goes away).

    ``accepted``: ids of results answered 202.  ``unknown``: ids of batches whose answer never
    came (the collector was killed while they were in flight): they may or may not be stored.
    ``refusals``: the 503 answers (status, Retry-After, body).
    """

    def __init__(
        self,
        url: str,
        *,
        clients: int = 2,
        batch_size: int = 50,
        suite: str = SUITE,
        stop_on_refusal: bool = False,
    ) -> None:
        self.url = url
        self.clients = clients
        self.batch_size = batch_size
        self.suite = suite
        self.stop_on_refusal = stop_on_refusal
        self.accepted: set[str] = set()
        self.unknown: set[str] = set()
        self.refusals: list[tuple[int, str | None, dict[str, Any]]] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Poster:
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, name=f"poster-{index}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
            assert not thread.is_alive(), "a client did not stop"

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def wait_accepted(self, count: int, timeout: float = 30.0) -> bool:
        return wait_until(lambda: self.count() >= count, timeout)

    def _run(self) -> None:
        headers = {"Content-Type": "application/json"}
        with httpx.Client(timeout=30.0) as client:
            for _ in range(MAX_BATCHES):
                if self._stop.is_set():
                    return
                sent = make_batch(self.batch_size, self.suite)
                ids = {r.id for r in sent.results}
                try:
                    response = client.post(
                        self.url + "/v1/results", content=encode_batch(sent), headers=headers
                    )
                except httpx.TransportError:
                    with self._lock:
                        self.unknown |= ids
                    return  # the collector went away
                with self._lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 202:
                        self.accepted |= ids
                    elif response.status_code == 503:
                        retry = response.headers.get("retry-after")
                        self.refusals.append((503, retry, response.json()))
                if response.status_code == 503 and self.stop_on_refusal:
                    return


def stored_ids(collector_results: Sequence[dict[str, Any]], allowed: set[str]) -> set[str]:
    """The ids of stored results, checking each is stored once and was sent."""
    counts = collections.Counter(r["id"] for r in collector_results)
    twice = [i for i, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} results stored more than once"
    strangers = set(counts) - allowed
    assert not strangers, f"{len(strangers)} stored results were never sent"
    return set(counts)


# -- the store a `process` writes


def store_count(data_dir: Path, suite: str = SUITE) -> int:
    """Results stored for ``suite`` in the SQLite store of ``data_dir`` (0 before it exists)."""
    if not (data_dir / STORE_FILE).exists():
        return 0
    store = SqliteStore(data_dir / STORE_FILE).open()
    try:
        suites = store.suites(DEFAULT_TENANT, limit=1000).items
    finally:
        store.close()
    return sum(int(s["results"]) for s in suites if s["suite"] == suite)


def store_ids(data_dir: Path, suite: str = SUITE) -> list[str]:
    """Every stored result id of ``suite`` (duplicates would show as repeated ids)."""
    store = SqliteStore(data_dir / STORE_FILE).open()
    ids: list[str] = []
    cursor: str | None = None
    try:
        for _ in range(10_000):
            page = store.results(DEFAULT_TENANT, suite, limit=10_000, cursor=cursor)
            ids.extend(item["id"] for item in page.items)
            cursor = page.next_cursor
            if cursor is None:
                return ids
    finally:
        store.close()
    raise AssertionError("more pages than expected")


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    """Sum of the offsets ``group`` committed on ``topic`` (without joining the group)."""
    consumer = Consumer(client_config(bootstrap, {"group.id": group}))
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


class ProcessMember:
    """A ``testengine-collector process`` subprocess (output appended to ``log``)."""

    def __init__(self, args: Sequence[str], data_dir: Path, log: Path) -> None:
        self.args = list(args)
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.output_start = 0

    def start(self) -> ProcessMember:
        self.output_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "collector_server",
                    "process",
                    "--data-dir",
                    str(self.data_dir),
                    *self.args,
                ],
                cwd=ROOT,
                env=collector_env({"PYTHONPATH": str(ROOT)}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def output(self) -> str:
        """What this run of the process printed."""
        with open(self.log, "rb") as handle:
            handle.seek(self.output_start)
            return handle.read().decode(errors="replace")

    def assignments(self) -> int:
        return self.output().count(" assigned ")

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        assert wait_until(lambda: text in self.output() or not self.running, timeout), (
            f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}"
        )
        assert text in self.output(), f"exited without {text!r}:\n{self.output()[-3000:]}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def freeze(self) -> None:
        """SIGSTOP: the process stops where it is (a SIGKILL afterwards changes nothing)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, int, int]:
        """SIGTERM, wait for a clean exit; (records consumed, new, malformed) it printed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        output = self.output()
        assert code == 0, output[-3000:]
        found = STOPPED.search(output)
        assert found, output[-3000:]
        consumed, new, malformed = (int(g) for g in found.groups())
        return consumed, new, malformed

    def close(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.kill()


def wait_stored(data_dir: Path, count: int, timeout: float = 60.0) -> int:
    """Poll the store until ``count`` results are stored; the last count seen."""
    seen = [0]

    def enough() -> bool:
        seen[0] = store_count(data_dir)
        return seen[0] >= count

    wait_until(enough, timeout, interval=0.05)
    return seen[0]


def collector_stored(
    collector: CollectorProcess, expected: set[str], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """The collector's stored results of SUITE once every id of ``expected`` is among them and
    the WAL and the processor are caught up (so a late duplicate would show)."""
    deadline = time.monotonic() + timeout
    results: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        results = collector.results(SUITE)
        if expected <= {r["id"] for r in results}:
            ready = collector.get("/readyz").json()
            if ready["sink"]["wal"]["depth"] == 0 and ready["processor"]["lag"] == 0:
                return collector.results(SUITE)
        time.sleep(0.05)  # polling a condition with a deadline
    missing = len(expected - {r["id"] for r in results})
    raise AssertionError(f"{missing} of {len(expected)} results not stored after {timeout} s")
