"""A partial batch is sent ``batch_age`` after its oldest result was submitted, not after the
sender thread happened to pick the result up (fake clock; the thread is not started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_testengine.sender import Policy, Sender
from pytest_testengine.spool import Spool
from tests.unit.test_sender import FakeClock, FakePoster


def idle_sender(
    tmp_path: Path, clock: FakeClock, poster: FakePoster, batch_size: int = 500
) -> Sender:
    return Sender(
        run={"run_id": "r"},
        poster=poster,
        spool=Spool(tmp_path / "spool"),
        policy=Policy(batch_size=batch_size, batch_age=2.0),
        clock=clock,
    )


def sent_ids(poster: FakePoster) -> list[list[str]]:
    return [[r["id"] for r in body["results"]] for body in poster.bodies]


@pytest.mark.parametrize(
    ("elapsed", "sent"),
    [
        pytest.param(0.0, [], id="fresh"),
        pytest.param(1.99, [], id="just-before"),
        pytest.param(2.0, [["a", "b"]], id="at-age"),
        pytest.param(30.0, [["a", "b"]], id="long-after"),
    ],
)
def test_a_partial_batch_is_sent_at_the_age_of_its_oldest_result(
    tmp_path: Path, elapsed: float, sent: list[list[str]]
) -> None:
    clock, poster = FakeClock(), FakePoster()
    sender = idle_sender(tmp_path, clock, poster)
    sender.submit({"id": "a"})
    clock.sleep(elapsed / 2)  # the thread sleeps meanwhile
    sender.submit({"id": "b"})
    clock.sleep(elapsed / 2)
    sender._drain()
    assert sent_ids(poster) == sent


def test_a_result_after_a_full_batch_counts_from_its_submission(tmp_path: Path) -> None:
    clock, poster = FakeClock(), FakePoster()
    sender = idle_sender(tmp_path, clock, poster, batch_size=2)
    sender.submit({"id": "0"})
    sender.submit({"id": "1"})  # a full batch: prepared for the thread at once
    assert [p.results for p in sender._outbox] == [[{"id": "0"}, {"id": "1"}]]
    clock.sleep(1.0)
    sender.submit({"id": "2"})
    clock.sleep(1.5)
    sender._drain()
    assert sent_ids(poster) == []  # 1.5 s old: not due
    clock.sleep(0.5)
    sender._drain()
    assert sent_ids(poster) == [["2"]]
