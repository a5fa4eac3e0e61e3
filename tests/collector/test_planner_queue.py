"""The dynamic queue: pure decisions (:func:`next_chunk`) and the planner on real SQLite files,
with an injected clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector_server.errors import RequestError
from collector_server.planner import (
    OVERDUE_POLL,
    RETRY_AFTER_MAX,
    RETRY_AFTER_MIN,
    NextRequest,
    Planner,
    PlanRequest,
    QueueAnswer,
    lease_for,
    next_chunk,
    plan_id_of,
)
from collector_server.settings import CollectorSettings
from collector_server.store.plans import ChunkChange, ChunkRow
from pytest_testengine.splitting import test_set_hash
from tests.collector.conftest import Clock, open_planner


def lease(estimate: float) -> float:
    return lease_for(estimate, base=60.0, margin=30.0)


def fresh(*estimates: float) -> list[ChunkRow]:
    return [ChunkRow(i, e, None, None, 0, None) for i, e in enumerate(estimates)]


def applied(chunks: list[ChunkRow], changes: list[ChunkChange]) -> list[ChunkRow]:
    """What PlanStore.next writes, in memory."""
    rows = {c.chunk_id: c for c in chunks}
    for change in changes:
        row = rows[change.chunk_id]
        if change.completed is not None and row.completed is None:
            row = replace(row, completed=change.completed)
        if change.holder is not None:
            row = replace(
                row,
                holder=change.holder,
                lease_until=change.lease_until,
                leases=row.leases + int(change.handed_out),
            )
        rows[change.chunk_id] = row
    return [rows[i] for i in sorted(rows)]


class Queue:
    """next_chunk over an in-memory queue."""

    def __init__(self, *estimates: float) -> None:
        self.chunks = fresh(*estimates)
        self.now = 0.0

    def ask(
        self,
        index: int,
        completed: tuple[int, ...] = (),
        holding: tuple[int, ...] = (),
        *,
        take: bool = True,
    ) -> QueueAnswer:
        changes, _, answer = next_chunk(
            self.chunks, index, completed, holding, now=self.now, lease=lease, take=take
        )
        self.chunks = applied(self.chunks, changes)
        return answer


# -- pure decisions --------------------------------------------------------------------------


def test_lease_is_the_longer_of_the_setting_and_three_estimates_plus_margin() -> None:
    assert lease_for(1.0, base=60.0, margin=30.0) == 60.0
    assert lease_for(20.0, base=60.0, margin=30.0) == 90.0
    assert lease_for(0.5, base=1.0, margin=0.0) == 1.5


def test_healthy_drain_hands_out_every_chunk_once_in_order() -> None:
    queue = Queue(8.0, 5.0, 3.0, 2.0, 1.0, 1.0, 1.0)
    handed: list[int] = []
    last: dict[int, int] = {}
    for _ in range(20):
        for index in (0, 1, 2):
            done = (last.pop(index),) if index in last else ()
            answer = queue.ask(index, completed=done)
            if answer.chunk is not None:
                handed.append(answer.chunk)
                last[index] = answer.chunk
                assert answer.retry_after is None
                assert answer.lease_seconds == 60.0
        queue.now += 1.0
        if all(c.completed is not None for c in queue.chunks):
            break
    assert handed == list(range(7))
    final = queue.ask(0)
    assert (final.chunk, final.done, final.retry_after, final.remaining) == (None, True, None, 0)
    assert all(c.leases == 1 for c in queue.chunks)


def test_expired_lease_goes_to_the_next_asker() -> None:
    queue = Queue(4.0, 4.0)
    assert queue.ask(0).chunk == 0  # shard 0 takes chunk 0 and dies
    assert queue.ask(1).chunk == 1
    queue.now = 59.0
    waiting = queue.ask(2, holding=())
    assert waiting.chunk is None
    assert waiting.retry_after == 1.0  # chunk 0's lease ends at 60
    assert not waiting.done
    queue.now = 60.0  # a lease ending now has expired
    again = queue.ask(2)
    assert again.chunk == 0
    assert queue.chunks[0].holder == 2
    assert queue.chunks[0].leases == 2
    # the dead shard comes back and completes it late: accepted, idempotent
    late = queue.ask(0, completed=(0,))
    assert late.remaining == 1
    assert queue.chunks[0].completed == 60.0
    assert queue.ask(2, completed=(0,)).remaining == 1
    assert queue.chunks[0].completed == 60.0  # the first completion stays


def test_holding_renews_only_the_holders_lease() -> None:
    queue = Queue(1.0, 1.0, 1.0)
    assert queue.ask(0).chunk == 0
    assert queue.ask(1).chunk == 1
    queue.now = 50.0
    assert queue.ask(0, holding=(0,)).chunk == 2
    assert queue.chunks[0].lease_until == 110.0  # renewed at 50
    assert queue.chunks[0].leases == 1  # a renewal is not a new hand-out
    queue.ask(2, holding=(1,))  # not shard 2's chunk: ignored
    assert queue.chunks[1].holder == 1
    assert queue.chunks[1].lease_until == 60.0
    queue.now = 61.0  # chunk 1 expired; its holder still runs it and says so
    queue.ask(1, holding=(1,))
    assert (queue.chunks[1].holder, queue.chunks[1].lease_until) == (1, 121.0)
    blocked = queue.ask(2)
    assert blocked.chunk is None
    assert blocked.retry_after == OVERDUE_POLL  # every chunk is past its estimate


def test_a_renewal_without_take_hands_out_nothing() -> None:
    queue = Queue(1.0, 1.0, 1.0)
    assert queue.ask(0).chunk == 0
    queue.now = 50.0
    renewal = queue.ask(0, holding=(0,), take=False)
    assert (renewal.chunk, renewal.done, renewal.remaining) == (None, False, 3)
    assert renewal.retry_after is not None
    assert queue.chunks[0].lease_until == 110.0  # renewed
    assert [c.holder for c in queue.chunks] == [0, None, None]  # nothing else leased
    finished = queue.ask(0, completed=(0,), take=False)
    assert (finished.chunk, finished.remaining) == (None, 2)
    assert queue.chunks[0].completed == 50.0


def test_retry_after_follows_expected_completion_and_expiry() -> None:
    queue = Queue(3.0, 30.0)
    assert queue.ask(0).chunk == 0  # 3 s of work, leased for 60 s
    queue.now = 0.5
    assert queue.ask(1).chunk == 1  # 30 s of work, leased from 0.5 for 120 s
    queue.now = 1.0
    assert queue.ask(2).retry_after == 2.0  # chunk 0 should be done at 3
    queue.now = 2.5
    assert queue.ask(2).retry_after == OVERDUE_POLL  # never more often than every second
    queue.now = 40.0
    assert queue.ask(2).retry_after == OVERDUE_POLL  # both overdue
    queue.ask(1, completed=(1,))
    queue.now = 59.0
    assert queue.ask(2).retry_after == OVERDUE_POLL
    queue.now = 59.99
    assert queue.ask(2).retry_after == RETRY_AFTER_MIN  # chunk 0's lease ends at 60
    queue.now = 60.0
    assert queue.ask(2).chunk == 0


def test_retry_after_bounds_and_own_chunks() -> None:
    queue = Queue(1.0)
    assert queue.ask(0).chunk == 0
    queue.now = 59.99
    other = queue.ask(1)
    assert other.retry_after == RETRY_AFTER_MIN
    mine = queue.ask(0, holding=(0,))
    assert (mine.chunk, mine.done, mine.retry_after) == (None, False, RETRY_AFTER_MAX)
    done = queue.ask(0, completed=(0,))
    assert (done.chunk, done.done, done.retry_after, done.remaining) == (None, True, None, 0)


def test_completing_a_chunk_never_handed_out_is_accepted() -> None:
    queue = Queue(1.0, 1.0)
    answer = queue.ask(0, completed=(1,))
    assert answer.chunk == 0
    assert answer.remaining == 1


# -- the planner on real files ---------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def planner(tmp_path: Path, clock: Clock) -> Iterator[Planner]:
    settings = CollectorSettings(data_dir=tmp_path, lease_seconds=10.0, lease_margin=1.0)
    with open_planner(settings, clock) as made:
        yield made


def dynamic_plan(planner: Planner, tests: list[str], total: int = 3) -> dict[str, Any]:
    request = PlanRequest("default", "b-1", total, 0, "test", "dynamic", tests)
    answer: dict[str, Any] = orjson.loads(planner.plan("default", request))
    return answer


TESTS = [f"t_{i // 10}.py::test_{i}" for i in range(60)]


def test_planner_drains_a_durable_queue(planner: Planner, clock: Clock) -> None:
    plan = dynamic_plan(planner, TESTS)
    assert plan["shards"] == []
    assert plan["lease_seconds"] == 10.0
    assert plan["chunks"] > 3
    plan_id = plan["plan_id"]
    seen: list[str] = []
    ids: list[int] = []
    holding: dict[int, int] = {}
    for _ in range(100):
        for index in range(3):
            done = [holding.pop(index)] if index in holding else []
            answer = planner.next("default", plan_id, NextRequest(index, done, []))
            if answer["chunk"]:
                holding[index] = answer["chunk"]["id"]
                ids.append(answer["chunk"]["id"])
                seen.extend(answer["chunk"]["tests"])
                assert answer["chunk"]["estimated"] > 0
        clock.now += 0.5
        if answer["done"]:
            break
    assert ids == list(range(plan["chunks"]))
    assert sorted(seen) == sorted(TESTS)
    assert len(seen) == len(TESTS)
    final = planner.next("default", plan_id, NextRequest(0, [], []))
    assert final == {
        "chunk": None,
        "done": True,
        "retry_after": None,
        "lease_seconds": 10.0,
        "remaining": 0,
    }
    report = planner.build("default", "default", "b-1")
    assert report is not None
    assert report["dynamic"] == {
        "chunks": plan["chunks"],
        "completed": plan["chunks"],
        "leased": 0,
        "expired_leases": 0,
        "re_leased": 0,
    }


def test_planner_re_leases_an_expired_chunk_after_a_restart(
    planner: Planner, clock: Clock, tmp_path: Path
) -> None:
    plan = dynamic_plan(planner, TESTS[:2], total=2)  # one test per chunk at 1 s each
    plan_id = plan["plan_id"]
    first = planner.next("default", plan_id, NextRequest(0, [], []))
    assert first["lease_seconds"] == 10.0
    second = planner.next("default", plan_id, NextRequest(1, [], []))
    chunk = first["chunk"]["id"]
    assert {chunk, second["chunk"]["id"]} == {0, 1}
    planner.close()
    planner.open()  # the queue's state is on disk
    blocked = planner.next("default", plan_id, NextRequest(1, [second["chunk"]["id"]], []))
    assert blocked["chunk"] is None
    assert blocked["retry_after"] == 1.001  # the other chunk should be done by then
    clock.now += 9.0
    assert planner.next("default", plan_id, NextRequest(1, [], []))["retry_after"] == 1.0
    report = planner.build("default", "default", "b-1")
    assert report is not None
    assert (report["dynamic"]["leased"], report["dynamic"]["expired_leases"]) == (1, 0)
    clock.now += 1.0
    report = planner.build("default", "default", "b-1")
    assert report is not None
    assert (report["dynamic"]["leased"], report["dynamic"]["expired_leases"]) == (0, 1)
    taken = planner.next("default", plan_id, NextRequest(1, [], []))
    assert taken["chunk"] == first["chunk"]
    done = planner.next("default", plan_id, NextRequest(1, [chunk], []))
    assert (done["done"], done["remaining"]) == (True, 0)
    report = planner.build("default", "default", "b-1")
    assert report is not None
    assert report["dynamic"]["re_leased"] == 1


def test_concurrent_shards_never_share_a_chunk(planner: Planner) -> None:
    tests = [f"t.py::test_{i}" for i in range(400)]
    plan = dynamic_plan(planner, tests, total=8)
    got: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def shard(index: int) -> None:
        start.wait()
        for _ in range(plan["chunks"] + 1):
            answer = planner.next("default", plan["plan_id"], NextRequest(index, [], []))
            if answer["chunk"] is None:
                return
            with lock:
                got.append(answer["chunk"]["id"])

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got) == list(range(plan["chunks"]))  # none twice, none lost


def test_next_refuses_what_does_not_fit_the_plan(planner: Planner) -> None:
    plan = dynamic_plan(planner, TESTS, total=3)
    cases = [
        (NextRequest(3, [], []), 422, "index"),
        (NextRequest(0, [plan["chunks"]], []), 422, "completed[0]"),
        (NextRequest(0, [0], [1, -1]), 422, "holding[1]"),
    ]
    for request, status, field in cases:
        with pytest.raises(RequestError) as info:
            planner.next("default", plan["plan_id"], request)
        assert (info.value.status, info.value.field) == (status, field)
        assert info.value.message.startswith("[testengine] ")
    with pytest.raises(RequestError, match="this plan has 3 shards, expected an integer from 0"):
        planner.next("default", plan["plan_id"], cases[0][0])
    with pytest.raises(RequestError) as info:
        planner.next("other", plan["plan_id"], NextRequest(0, [], []))
    assert (info.value.status, info.value.code) == (404, "plan_not_found")
    static = PlanRequest("default", "b-1", 3, 0, "test", "static", TESTS)
    static_id = orjson.loads(planner.plan("default", static))["plan_id"]
    assert static_id == plan_id_of(
        ("default", "default", "b-1", 3, "test", "static", test_set_hash(TESTS))
    )
    with pytest.raises(RequestError) as info:
        planner.next("default", static_id, NextRequest(0, [], []))
    assert (info.value.status, info.value.code) == (409, "plan_not_dynamic")
    assert "plan " + static_id + " is static" in info.value.message


def test_dynamic_by_file_keeps_a_file_in_one_chunk(planner: Planner) -> None:
    request = PlanRequest("default", "b-2", 2, 0, "file", "dynamic", TESTS)
    plan = orjson.loads(planner.plan("default", request))
    chunk_of: dict[str, int] = {}
    for _ in range(plan["chunks"]):
        chunk = planner.next("default", plan["plan_id"], NextRequest(0, [], []))["chunk"]
        for test in chunk["tests"]:
            file = test.partition("::")[0]
            assert chunk_of.setdefault(file, chunk["id"]) == chunk["id"]
    assert len(chunk_of) == 6
    assert planner.next("default", plan["plan_id"], NextRequest(0, [], []))["chunk"] is None
