"""The write-ahead log: order, limits, recovery of torn tails, survival of SIGKILL."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_server.sinks.wal import (
    FRAME,
    SUFFIX,
    WalChunk,
    WalError,
    WalFull,
    WriteAheadLog,
)

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[WriteAheadLog]:
    log = WriteAheadLog(tmp_path / "wal", segment_bytes=256)
    log.open()
    yield log
    log.close()


def drain(log: WriteAheadLog, max_entries: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(10_000):
        chunk = log.read(max_entries)
        if not chunk.entries:
            return out
        out.extend(chunk.entries)
        log.commit(chunk)
    raise AssertionError("the WAL did not drain")


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def test_entries_come_back_in_order_across_segments(wal: WriteAheadLog) -> None:
    entries = [f"entry-{i}".encode() * 3 for i in range(50)]
    for i in range(0, 50, 7):
        wal.append(entries[i : i + 7])
    assert wal.depth == 50
    assert len(segments(wal.directory)) > 3  # 256-byte segments roll over

    assert drain(wal, max_entries=4) == entries
    assert wal.depth == 0
    assert wal.size == 0
    assert segments(wal.directory) == []


def test_read_respects_entry_and_byte_limits(wal: WriteAheadLog) -> None:
    wal.append([b"a" * 10, b"b" * 10, b"c" * 10])
    assert wal.read(max_entries=2).entries == (b"a" * 10, b"b" * 10)
    assert wal.read(max_bytes=25).entries == (b"a" * 10, b"b" * 10)
    assert wal.read(max_bytes=1).entries == (b"a" * 10,)  # at least one entry
    assert wal.depth == 3  # reading does not consume


def test_an_entry_larger_than_a_segment_gets_its_own(wal: WriteAheadLog) -> None:
    wal.append([b"small"])
    wal.append([b"x" * 1000])
    wal.append([b"after"])
    assert drain(wal) == [b"small", b"x" * 1000, b"after"]


def test_reopen_keeps_the_entries_not_yet_committed(tmp_path: Path) -> None:
    first = WriteAheadLog(tmp_path, segment_bytes=64)
    first.open()
    first.append([b"%d" % i for i in range(20)])
    first.commit(first.read(max_entries=7))
    first.close()

    second = WriteAheadLog(tmp_path, segment_bytes=64)
    second.open()
    try:
        assert second.depth == 13
        assert drain(second) == [b"%d" % i for i in range(7, 20)]
    finally:
        second.close()


def test_a_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([b"one", b"two"])
    wal.close()
    (segment,) = segments(tmp_path)
    with open(segment, "ab") as handle:  # a crash in the middle of the next append
        handle.write(FRAME.pack(100, 0) + b"only part of the payload")

    reopened = WriteAheadLog(tmp_path)
    reopened.open()
    try:
        assert reopened.dropped_bytes == FRAME.size + len(b"only part of the payload")
        reopened.append([b"three"])
        assert drain(reopened) == [b"one", b"two", b"three"]
    finally:
        reopened.close()


def test_a_corrupt_last_entry_is_cut(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([b"good"])
    wal.append([b"flipped"])
    wal.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))

    reopened = WriteAheadLog(tmp_path)
    reopened.open()
    try:
        assert reopened.depth == 1
        assert drain(reopened) == [b"good"]
    finally:
        reopened.close()


def test_full_wal_refuses_appends_until_replayed(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, max_bytes=100)
    wal.open()
    try:
        wal.append([b"x" * 40])
        with pytest.raises(WalFull) as caught:
            wal.append([b"y" * 60])
        assert str(caught.value) == (
            "[testengine] write-ahead log full: 48 bytes held, 68 more needed, limit 100 bytes; "
            "it drains when Kafka accepts records again"
        )
        assert wal.depth == 1
        drain(wal)
        wal.append([b"y" * 60])
        assert wal.depth == 1
    finally:
        wal.close()


def test_a_second_process_cannot_open_the_same_wal(wal: WriteAheadLog) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from collector_server.sinks.wal import WriteAheadLog, WalError\n"
        "try:\n"
        f"    WriteAheadLog(Path({str(wal.directory)!r})).open()\n"
        "except WalError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=CHILD_ENV
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == (
        f"[testengine] write-ahead log {wal.directory} is in use by another process; "
        "give every collector process its own data directory"
    )


def test_commit_of_a_stale_chunk_is_refused(wal: WriteAheadLog) -> None:
    wal.append([b"a", b"b"])
    chunk = wal.read(max_entries=1)
    wal.commit(chunk)
    with pytest.raises(WalError, match="commit from"):
        wal.commit(chunk)
    assert wal.depth == 1


def test_commit_of_an_empty_chunk_changes_nothing(wal: WriteAheadLog) -> None:
    empty = wal.read()
    assert empty == WalChunk((), empty.start, empty.start)
    wal.commit(empty)
    wal.append([b"a"])
    assert wal.read().entries == (b"a",)


WRITER = """
import sys
from pathlib import Path
from collector_server.sinks.wal import WriteAheadLog
wal = WriteAheadLog(Path(sys.argv[1]), segment_bytes=4096)
wal.open()
n = 0
for batch in range(100_000):
    wal.append([b"%08d" % (n + i) + b"-" * 200 for i in range(5)])
    n += 5
    print(n, flush=True)
"""


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    acknowledged = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 20
        while acknowledged < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the writer exited early"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert acknowledged >= 300

    wal = WriteAheadLog(tmp_path, segment_bytes=4096)
    wal.open()
    try:
        entries = drain(wal, max_entries=97)
    finally:
        wal.close()
    assert len(entries) >= acknowledged
    assert [int(e[:8]) for e in entries] == list(range(len(entries)))
    assert all(e[8:] == b"-" * 200 for e in entries)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.binary(max_size=40), min_size=1, max_size=5)),
        st.tuples(st.just("replay"), st.integers(min_value=1, max_value=6)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_behaves_like_a_queue(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, Any]]
) -> None:
    directory = tmp_path_factory.mktemp("wal")
    model: collections.deque[bytes] = collections.deque()
    wal = WriteAheadLog(directory, segment_bytes=100)
    wal.open()
    try:
        for name, arg in ops:
            if name == "append":
                wal.append(arg)
                model.extend(arg)
            elif name == "replay":
                chunk = wal.read(max_entries=arg)
                assert list(chunk.entries) == [model[i] for i in range(len(chunk.entries))]
                wal.commit(chunk)
                for _ in chunk.entries:
                    model.popleft()
            else:
                wal.close()
                wal = WriteAheadLog(directory, segment_bytes=100)
                wal.open()
            assert wal.depth == len(model)
        assert drain(wal) == list(model)
        assert segments(directory) == []
    finally:
        wal.close()
