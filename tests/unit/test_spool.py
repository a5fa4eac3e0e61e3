"""The spool: atomic files, order, and replay that deletes only what was acknowledged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pytest_testengine.spool import Spool, count_results, replay
from pytest_testengine.transport import Answer, Delivered, Rejected, Retry


def body(n: int, tag: str = "") -> bytes:
    return orjson.dumps(
        {"schema": 1, "run": {"run_id": tag}, "results": [{"id": f"{tag}{i}"} for i in range(n)]}
    )


def test_the_directory_is_created_on_the_first_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool")
    assert spool.files() == []
    assert not spool.directory.exists()
    path = spool.write(body(2))
    assert path.parent == spool.directory
    assert path.read_bytes() == body(2)


def test_files_come_back_oldest_first_and_leave_no_temporary_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    written = [spool.write(body(1, tag=str(i))) for i in range(20)]
    assert spool.files() == written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unfinished_temporary_files_are_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / ".tmp-abc.json").write_bytes(b'{"partial')
    (tmp_path / "notes.txt").write_text("x")
    assert spool.files() == []


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        spool.write(body(1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(body(3), 3, id="batch"),
        pytest.param(b"not json", 0, id="garbage"),
        pytest.param(b"[]", 0, id="not-an-object"),
    ],
)
def test_count_results(raw: bytes, expected: int) -> None:
    assert count_results(raw) == expected


def test_replay_deletes_each_file_only_after_the_collector_acknowledged_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.write(body(2, tag=str(i)))
    seen: list[bytes] = []

    def deliver(raw: bytes) -> Answer:
        seen.append(raw)
        assert len(spool.files()) == 3 - len(seen) + 1  # still there while sending
        return Delivered(202, 2)

    report = replay(spool, deliver)
    assert (report.files_sent, report.results_sent, report.files_left) == (3, 6, 0)
    assert seen == [body(2, tag=str(i)) for i in range(3)]
    assert spool.files() == []


def test_replay_stops_when_the_collector_is_unreachable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.write(body(1, tag=str(i)))
    answers: Iterator[Answer] = iter(
        [Delivered(202), Retry("could not reach the collector at X (connection refused)")]
    )
    report = replay(spool, lambda raw: next(answers))
    assert (report.files_sent, report.files_left) == (1, 2)
    assert len(spool.files()) == 2
    assert report.problems[0].endswith(": could not reach the collector at X (connection refused)")


def test_replay_skips_a_refused_batch_and_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    paths = [spool.write(body(1, tag=str(i))) for i in range(3)]
    answers: Iterator[Answer] = iter(
        [Rejected(422, "invalid", keep=False), Delivered(202), Delivered(202)]
    )
    report = replay(spool, lambda raw: next(answers))
    assert (report.files_sent, report.files_left) == (2, 1)
    assert spool.files() == [paths[0]]
    assert report.problems == [f"{paths[0].name}: invalid"]


def test_replay_stops_on_a_bad_token(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(2):
        spool.write(body(1, tag=str(i)))
    report = replay(spool, lambda raw: Rejected(401, "bad token", keep=True))
    assert (report.files_sent, report.files_left) == (0, 2)
