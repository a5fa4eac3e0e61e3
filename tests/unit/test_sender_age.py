"""A partial batch is due ``batch_age`` after its oldest result was submitted, not after the
sender thread happened to pick the result up (fake clock; the thread is not started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_testengine.sender import Batcher, Policy, Sender
from pytest_testengine.spool import Spool
from tests.unit.test_sender import FakeClock


def idle_sender(tmp_path: Path, clock: FakeClock, batch_size: int = 500) -> Sender:
    return Sender(
        run={"run_id": "r"},
        poster=None,
        spool=Spool(tmp_path / "spool"),
        policy=Policy(batch_size=batch_size, batch_age=2.0),
        clock=clock,
    )


def test_batcher_takes_the_age_of_its_first_item() -> None:
    clock = FakeClock()
    batcher = Batcher(100, 2.0, clock)
    batcher.add("a", since=clock.now() - 1.5)
    batcher.add("b", since=clock.now() - 9.0)  # only the first item sets the age
    assert batcher.wait_time() == pytest.approx(0.5)


def test_age_counts_from_submission(tmp_path: Path) -> None:
    clock = FakeClock()
    sender = idle_sender(tmp_path, clock)
    sender.submit({"id": "1"})
    clock.sleep(1.5)  # the thread sleeps meanwhile
    sender.submit({"id": "2"})
    sender._drain()  # not due yet: left waiting
    assert len(sender._batcher) == 0
    clock.sleep(0.5)
    sender._drain()
    assert sender._batcher.due() == [{"id": "1"}, {"id": "2"}]


def test_a_result_after_a_full_batch_counts_from_its_submission(tmp_path: Path) -> None:
    clock = FakeClock()
    sender = idle_sender(tmp_path, clock, batch_size=2)
    sender.submit({"id": "0"})
    sender.submit({"id": "1"})  # a full batch: prepared for the thread at once
    assert [p.results for p in sender._outbox] == [[{"id": "0"}, {"id": "1"}]]
    clock.sleep(1.0)
    sender.submit({"id": "2"})
    clock.sleep(1.5)
    sender._drain()
    assert len(sender._batcher) == 0  # 1.5 s old: not due
    clock.sleep(0.5)
    sender._drain()
    assert sender._batcher.due() == [{"id": "2"}]
