"""Dynamic splitting: a shard runs chunks of work leased from the collector until none is left.

``--split-mode dynamic`` replaces pytest's run loop (as pytest-xdist workers do): the shard
asks ``POST /v1/plans/{id}/next`` for a chunk, runs its tests with
``item.ihook.pytest_runtest_protocol``, and asks for the next chunk *before* running the last
test of the current one, so ``nextitem`` is right and module fixtures shared across chunks
are not torn down needlessly.  Every request reports the chunks completed since the last one
and renews the leases of the chunks still held; a small daemon thread renews them when one
test runs long.  When no chunk is free but the queue is not done (other shards hold the rest),
the shard waits ``retry_after``, for a bounded total time.

When the collector stops answering mid-run, the split fallback decides: ``local`` runs the rest
of this shard's share of the local fallback plan (the plan every shard computes alike), ``all``
runs every remaining test, ``fail`` interrupts the session.  A test never runs twice in one
shard; across shards, a chunk whose lease expired may run again elsewhere, never get lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import pytest

from pytest_testengine.config import ConfigError
from pytest_testengine.sharding import (
    PREFIX,
    TROUBLESHOOTING,
    Lease,
    PlanClient,
    PlanUnavailable,
    Selection,
    SplitSpec,
)

#: Longest single pause when no chunk is free, whatever retry_after says.
MAX_PAUSE: Final = 5.0
#: The lease length assumed until the collector tells one.
DEFAULT_LEASE: Final = 60.0


@dataclass(frozen=True, slots=True)
class Batch:
    """Tests to run together: one leased chunk, or the remainder after a fallback."""

    chunk_id: object | None  # None: not leased (fallback)
    items: tuple[pytest.Item, ...]
    estimated: float | None = None


class DynamicRun:
    """Runs the leased chunks of one dynamic plan (see the module docstring)."""

    def __init__(
        self,
        spec: SplitSpec,
        client: PlanClient,
        plan_id: str,
        *,
        lease_seconds: float | None,
        fallback: Callable[[str], Selection],
        write: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.client = client
        self.plan_id = plan_id
        self.lease_seconds = lease_seconds or DEFAULT_LEASE
        self.fallback = fallback
        self.write = write
        self.clock = clock
        self.sleep = sleep
        self.ran: set[str] = set()
        self.chunks = 0
        self.estimated = 0.0
        self.fell_back = False
        self._items: dict[str, list[pytest.Item]] = {}
        self._queue: deque[Batch] = deque()
        self._holding: list[object] = []
        self._unreported: list[object] = []
        self._done = False
        self._lock = threading.Lock()
        self._last_request = clock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- the collector ----------------------------------------------------------------------

    def _request(self, *, take: bool = True) -> Lease:
        """One ``next`` call: report completions, renew held leases, queue a new chunk
        (``take=False``: no new chunk, a renewal only)."""
        with self._lock:
            completed, holding = list(self._unreported), list(self._holding)
            lease = self.client.next(self.plan_id, self.spec.index, completed, holding, take=take)
            self._last_request = self.clock()
            del self._unreported[: len(completed)]
            if lease.lease_seconds:
                self.lease_seconds = lease.lease_seconds
            if lease.chunk is not None:
                self._holding.append(lease.chunk.id)
                items = tuple(
                    item for test_id in lease.chunk.tests for item in self._items.get(test_id, ())
                )
                self._queue.append(Batch(lease.chunk.id, items, lease.chunk.estimated))
            self._done = lease.done
            return lease

    def _heartbeat(self) -> None:
        """Renew held leases when no request went out for a third of the lease."""
        while not self._stop.wait(max(0.2, self.lease_seconds / 6)):
            if self.fell_back:
                return
            interval = max(0.5, self.lease_seconds / 3)
            if self.clock() - self._last_request < interval:
                continue
            if not self._holding and not self._unreported:
                continue
            try:
                self._request(take=False)  # renew only: a chunk taken here would wait unrun
            except PlanUnavailable:
                return  # the main loop notices at its next request

    def _take(self, session: pytest.Session, *, wait: bool) -> Batch | None:
        """The next batch to run, None when there is none (now, with ``wait=False``)."""
        if self.fell_back:
            return None  # the fallback batch was the last one
        if self._queue:
            return self._queue.popleft()
        if self._done and not self._unreported:
            return None
        deadline = self.clock() + 3 * self.lease_seconds + 30.0
        for _ in range(100_000):
            try:
                lease = self._request()
            except PlanUnavailable as exc:
                return self._fall_back(session, str(exc))
            if self._queue:
                return self._queue.popleft()
            if lease.done or not wait:
                return None
            pause = min(lease.retry_after or 1.0, MAX_PAUSE, deadline - self.clock())
            if pause <= 0:
                break
            self.sleep(pause)
        self.write(
            f"{PREFIX} shard {self.spec.index + 1}/{self.spec.total} stopped waiting for a "
            f"chunk of plan {self.plan_id}: the other shards still hold the rest after "
            f"{3 * self.lease_seconds + 30.0:.0f} s; see {TROUBLESHOOTING}#dynamic-split-waits"
        )
        return None

    def _fall_back(self, session: pytest.Session, problem: str) -> Batch | None:
        self.fell_back = True
        self._queue.clear()
        try:
            selection = self.fallback(problem)
        except ConfigError as exc:
            raise session.Interrupted(str(exc)) from None
        items = tuple(
            item
            for test_id, found in self._items.items()
            if selection.keep is None or test_id in selection.keep
            for item in found
            if item.nodeid not in self.ran
        )
        if selection.warning:
            self.write(f"{selection.warning} ({len(items):,} tests left for this shard)")
        return Batch(None, items)

    # -- the run loop -----------------------------------------------------------------------

    def run(self, session: pytest.Session, items: Sequence[pytest.Item]) -> None:
        for item in items:
            self._items.setdefault(item.nodeid, []).append(item)
        self._beat = threading.Thread(target=self._heartbeat, name="testengine-leases")
        self._beat.daemon = True
        self._beat.start()
        try:
            self._loop(session)
        finally:
            self._stop.set()
            self._beat.join(timeout=self.client.timeout * self.client.attempts + 5.0)

    def _loop(self, session: pytest.Session) -> None:
        current = self._take(session, wait=True)
        while current is not None:
            if current.chunk_id is not None:
                self.chunks += 1
                self.estimated += current.estimated or 0.0
            todo = [item for item in current.items if item.nodeid not in self.ran]
            following: Batch | None = None
            asked = False
            for position, item in enumerate(todo):
                self.ran.add(item.nodeid)  # before a fallback computes what is left
                if position + 1 < len(todo):
                    nextitem: pytest.Item | None = todo[position + 1]
                else:  # lease the next chunk before the last test of this one
                    following, asked = self._take(session, wait=False), True
                    nextitem = self._first_new(following)
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                if session.shouldfail:
                    raise session.Failed(session.shouldfail)
                if session.shouldstop:
                    raise session.Interrupted(session.shouldstop)
            self._complete(current)
            if not asked or following is None:
                following = self._take(session, wait=True)
            current = following

    def _first_new(self, batch: Batch | None) -> pytest.Item | None:
        if batch is None:
            return None
        return next((item for item in batch.items if item.nodeid not in self.ran), None)

    def _complete(self, batch: Batch) -> None:
        if batch.chunk_id is None:
            return
        with self._lock:
            if batch.chunk_id in self._holding:
                self._holding.remove(batch.chunk_id)
            self._unreported.append(batch.chunk_id)
