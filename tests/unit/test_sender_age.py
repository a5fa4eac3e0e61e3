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


class TeardownsOnly:
    """A converter like the plugin's: a result per test, finished by its teardown report."""

    def convert(self, items: list[tuple[str, int, float]]) -> list[dict[str, object]]:
        return [{"id": str(n), "t": t} for when, n, t in items if when == "teardown"]

    def unfinished(self) -> list[dict[str, object]]:
        return []


def test_under_a_steady_stream_no_partial_batch_leaves_before_its_age(tmp_path: Path) -> None:
    clock, poster = FakeClock(), FakePoster()
    sender = Sender(
        run={"run_id": "r"},
        poster=poster,
        spool=Spool(tmp_path / "spool"),
        converter=TeardownsOnly(),
        policy=Policy(batch_size=500, batch_age=1.0),
        clock=clock,
    )
    for n in range(10_000):  # 1,000 tests a second for 10 s; some skipped (no call report)
        for when in ("setup", "teardown") if n % 7 == 0 else ("setup", "call", "teardown"):
            sender.submit((when, n, clock.now()))
        clock.sleep(0.001)
        if n % 10 == 0:  # the sender thread looks every 10 ms
            sender._send_outbox()
            sender._drain()
    assert len(poster.bodies) > 10
    early = [b for b in poster.bodies if len(b["results"]) < 500]
    assert early == []  # every batch left full: none was due before it filled
