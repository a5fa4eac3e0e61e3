"""Background delivery of results: batching, retries, the flush deadline, the spool.

The pytest hooks call :meth:`Sender.submit` with a result dict, or with a pytest report that a
:class:`Converter` turns into results: an append to a deque, most of the time.  Every
``batch_size`` items, submit() converts them and encodes each full batch (orjson; the output
file's lines too).  One daemon thread compresses, writes and posts those batches through the
transport (zlib lets go of the GIL while it works, so that runs beside the tests; the transport's
module is loaded only with a collector to send to: an output file alone needs no HTTP client),
retrying transient failures with jittered exponential backoff (tenacity, imported only then),
honouring ``Retry-After``, never past the deadline; it also sends a partial batch once its
oldest result has waited ``batch_age`` (on an injected :class:`Clock`).

Memory is bounded: when more than ``queue_size`` results wait, the oldest batch is written to
the spool instead of growing the queue, and batches are dropped once they are delivered.
:meth:`Sender.close` flushes for at most ``flush_deadline`` seconds; whatever is left goes to
the spool.  Every result ends up counted once: sent, spooled or dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

import orjson

from pytest_testengine import SCHEMA_VERSION
from pytest_testengine.output import OutputFile
from pytest_testengine.spool import Spool

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from pytest_testengine.transport import Answer

#: Extra time close() gives the thread to write the spool after the deadline.
CLOSE_GRACE: Final = 2.0
#: Part of the flush deadline (at most a tenth) kept for the spool and the end of the process.
CLOSE_MARGIN: Final = 0.25


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class Converter(Protocol):
    """Turns submitted items into results, in submission order, a batch at a time (on the
    thread that submits, or on the sender thread for items that wait too long)."""

    def convert(self, items: list[Any]) -> list[dict[str, Any]]: ...

    def unfinished(self) -> list[dict[str, Any]]:
        """The results still open once every item is converted (the end of the run)."""
        ...


class Poster(Protocol):
    url: str

    def content(self, body: bytes) -> bytes:
        """What goes on the wire for ``body`` (compressed, if so)."""
        ...

    def post(
        self, body: bytes, *, timeout: float | None = None, content: bytes | None = None
    ) -> Answer:
        """Post ``body``, sending ``content`` (``content(body)``) when given."""
        ...

    def close(self) -> None: ...


class Policy(NamedTuple):  # not a frozen dataclass: cheaper to define, at the start of a run
    batch_size: int = 1000
    batch_age: float = 1.0  # seconds a partial batch may wait
    queue_size: int = 20000  # results waiting in memory before spilling to the spool
    flush_deadline: float = 5.0  # seconds close() may take
    retry_budget: float = 5.0  # seconds one batch may spend retrying during the run
    backoff: float = 0.2  # first backoff (seconds), doubled per attempt, with full jitter
    max_backoff: float = 5.0


class OutOfTime(Exception):
    """Raised by a sleep that learns it would end past the deadline: stop retrying."""


class _Schedule:
    """tenacity wait/stop: backoff or Retry-After, and no sleep that would pass the deadline."""

    def __init__(
        self, clock: Clock, deadline: Callable[[], float], policy: Policy, single: bool
    ) -> None:
        self.clock = clock
        self.deadline = deadline
        self.single = single
        from tenacity import wait_random_exponential

        self.jitter = wait_random_exponential(multiplier=policy.backoff, max=policy.max_backoff)
        self.upcoming = 0.0
        self.last: Answer | None = None

    def wait(self, state: RetryCallState) -> float:
        from pytest_testengine.transport import Retry

        answer = state.outcome.result() if state.outcome else None
        self.last = answer
        if isinstance(answer, Retry) and answer.retry_after is not None:
            self.upcoming = answer.retry_after
        else:
            self.upcoming = float(self.jitter(state))
        return self.upcoming

    def stop(self, state: RetryCallState) -> bool:
        return self.single or self.clock.now() + self.upcoming >= self.deadline()


def deliver(
    poster: Poster,
    body: bytes,
    *,
    content: bytes | None = None,
    deadline: Callable[[], float],
    policy: Policy,
    clock: Clock,
    sleep: Callable[[float], None] = time.sleep,
    single: bool = False,
) -> Answer:
    """Post ``body`` (as ``content``, if given: see :meth:`Poster.content`) until delivered,
    rejected, or the next try would pass ``deadline()`` (a time on ``clock``); ``single``
    makes one attempt only.  Returns the last answer.

    ``sleep`` may raise :class:`OutOfTime` to stop waiting (the deadline moved closer)."""
    from pytest_testengine.transport import Retry  # loaded with the poster

    def attempt() -> Answer:
        return poster.post(body, timeout=max(0.05, deadline() - clock.now()), content=content)

    first = attempt()
    if single or not isinstance(first, Retry):
        return first  # the common case needs no retry machinery (nor its imports)
    from tenacity import Retrying, retry_if_result

    schedule = _Schedule(clock, deadline, policy, single)
    answers = iter([first])

    def again() -> Answer:  # the first attempt's answer, then new attempts
        return next(answers, None) or attempt()

    retrying = Retrying(
        retry=retry_if_result(lambda answer: isinstance(answer, Retry)),
        wait=schedule.wait,
        stop=schedule.stop,
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    try:
        answer: Answer = retrying(again)
    except OutOfTime:
        assert schedule.last is not None  # a sleep only follows a failed attempt
        return schedule.last
    return answer


class Prepared(NamedTuple):
    """A batch encoded for delivery: its request body (None without a collector) and its
    output file lines (None without an output file)."""

    results: list[dict[str, Any]]
    body: bytes | None
    lines: bytes | None


@dataclass(slots=True)
class Summary:
    """What happened to the results of a run."""

    url: str | None = None
    submitted: int = 0
    sent: int = 0
    spooled: int = 0
    dropped: int = 0
    written: int = 0  # to the output file
    spool_dir: str | None = None
    output: str | None = None
    problems: list[str] = field(default_factory=list)  # first of each kind, in order


class Sender:
    """Delivers submitted results from a background thread."""

    def __init__(
        self,
        *,
        run: Mapping[str, Any],
        poster: Poster | None,
        spool: Spool,
        output: OutputFile | None = None,
        policy: Policy | None = None,
        clock: Clock | None = None,
        converter: Converter | None = None,
    ) -> None:
        self.policy = policy = policy or Policy()
        self.clock: Clock = clock or MonotonicClock()
        self.summary = Summary(
            url=poster.url if poster else None,
            spool_dir=str(spool.directory),
            output=str(output.path) if output else None,
        )
        self._poster = poster
        self._spool = spool
        self._output = output
        self._head = b'{"schema":%d,"run":%s,"results":' % (SCHEMA_VERSION, orjson.dumps(run))
        self._converter = converter
        self._convert_lock = threading.Lock()  # pop and convert as one step, in order
        self._rest_taken = False
        self._pending: deque[Any] = deque()  # submitted items, not converted yet
        self._ready: deque[dict[str, Any]] = deque()  # results not in a batch yet
        self._outbox: deque[Prepared] = deque()  # full batches, encoded, to deliver
        self._pending_since = 0.0
        self._oldest = 0.0  # when the oldest item waiting was submitted (about)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._interrupt = threading.Event()
        self._closing = False
        self._deadline = math.inf
        self._down = False  # the last batch could not be delivered
        self._give_up = False  # send nothing more: spool the rest
        self._thread: threading.Thread | None = None

    # -- the pytest side (main thread) ----------------------------------------------------

    def start(self) -> None:
        if self._output is not None:
            try:
                self._output.open()
            except OSError as exc:
                self._problem(f"could not write {self._output.path} ({exc})")
                self._output = None
        self._thread = threading.Thread(target=self._loop, name="testengine-sender", daemon=True)
        self._thread.start()

    def submit(self, report: Any) -> None:
        """Queue one result, or one item of the converter (a pytest report: this method is
        the ``pytest_runtest_logreport`` hook itself, hence the argument's name; cheap).

        Items are converted, and full batches encoded, here, a batch's worth at a time: that
        is cheap in a tight loop, and the sender thread, which then only compresses (without
        the GIL), writes and posts, seldom competes with the tests for the GIL (each time it
        does costs both threads context switches).  What a slow test keeps waiting, the
        sender thread converts and sends when it is due."""
        pending = self._pending
        if not pending:  # its age counts from now
            self._pending_since = self.clock.now()
            if not self._ready:
                self._oldest = self._pending_since
        pending.append(report)
        size = self.policy.batch_size
        if len(pending) >= size:
            with self._convert_lock:  # the sender thread may take due results meanwhile
                self._convert()
                ready = self._ready
                full = [[ready.popleft() for _ in range(size)] for _ in range(len(ready) // size)]
                if full:  # what is left came with these items (ready held less than a batch)
                    self._oldest = self._pending_since
            outbox = self._outbox
            for batch in full:
                outbox.append(self._prepare(batch))
            if len(outbox) * size > self.policy.queue_size:
                self._spill()
            if outbox and not self._wake.is_set():
                self._wake.set()

    def close(self) -> Summary:
        """Flush for at most the flush deadline, spool the rest, stop the thread."""
        thread = self._thread
        if thread is not None:
            # delivery stops a little before the deadline: writing the spool, joining the
            # thread and exiting fit in what is left, so the run ends within the deadline
            flush = self.policy.flush_deadline
            self._deadline = self.clock.now() + flush - min(CLOSE_MARGIN, flush * 0.1)
            self._closing = True
            self._wake.set()
            self._interrupt.set()
            thread.join(self.policy.flush_deadline + CLOSE_GRACE)
            if thread.is_alive():
                self._problem("the sender did not finish in time")
        alive = thread is not None and thread.is_alive()
        self._give_up = True  # from here on, whatever is left goes to the spool
        self._send_outbox()
        self._drain(final=True)
        if not alive and self._poster is not None:
            self._poster.close()
        if self._output is not None:
            self._output.close()
            self.summary.written = self._output.written
        return self.summary

    # -- the sender thread ------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            age = self.policy.batch_age
            while not self._closing:
                self._send_outbox()
                self._drain()
                if self._outbox:
                    continue
                wait = age
                if self._pending or self._ready:  # due batch_age after the oldest came
                    wait = max(0.0, self._oldest + age - self.clock.now())
                self._wake.wait(wait)
                self._wake.clear()
            self._send_outbox()
            self._drain(final=True)
        except Exception as exc:  # never let the thread die silently
            self._problem(f"internal error in the sender: {type(exc).__name__}: {exc}")

    def _convert(self, final: bool = False) -> None:
        """Convert every submitted item into results ready to send, in submission order (on
        whichever thread calls it, holding ``_convert_lock``); ``final``: and what the
        converter still holds (once)."""
        pending = self._pending
        items = [pending.popleft() for _ in range(len(pending))]
        converter = self._converter
        results = items if converter is None or not items else converter.convert(items)
        if final and not self._rest_taken and converter is not None:
            self._rest_taken = True
            results += converter.unfinished()
        self._ready.extend(results)
        self._count("submitted", len(results))

    def _take(self, final: bool = False) -> list[dict[str, Any]]:
        """Take the results not in a batch yet, in submission order."""
        with self._convert_lock:
            self._convert(final)
            ready = self._ready
            results = list(ready)
            ready.clear()
        return results

    def _drain(self, final: bool = False) -> None:
        """Send what waits once the oldest of it has waited ``batch_age`` (``final``: now);
        until then it is left to submit(), which converts and batches on its own thread."""
        if not final:
            waiting = self._pending or self._ready
            if not waiting or self.clock.now() - self._oldest < self.policy.batch_age:
                return
        self._ship_all(self._take(final))

    def _ship_all(self, results: list[dict[str, Any]]) -> None:
        size = self.policy.batch_size
        for start in range(0, len(results), size):
            self._ship(results[start : start + size])

    def _sleep(self, seconds: float) -> None:
        """Sleep between retries; when close() moves the deadline closer than the end of this
        sleep, stop retrying instead of waiting less than the collector asked for."""
        end = time.monotonic() + seconds
        ends_at = self.clock.now() + seconds
        while (remaining := end - time.monotonic()) > 0:
            if self._interrupt.wait(remaining):
                self._interrupt.clear()
                if self._closing and ends_at > self._deadline:
                    raise OutOfTime

    def _encode(self, results: list[dict[str, Any]]) -> bytes:
        return self._head + orjson.dumps(results) + b"}"

    def _prepare(self, batch: list[dict[str, Any]], *, output: bool = True) -> Prepared:
        lines = self._output.lines(batch) if output and self._output is not None else None
        body = self._encode(batch) if self._poster is not None else None
        return Prepared(batch, body, lines)

    def _send_outbox(self) -> None:
        outbox = self._outbox
        while outbox:
            try:
                prepared = outbox.popleft()
            except IndexError:  # taken by a spill meanwhile
                return
            self._send(prepared)

    def _ship(self, batch: list[dict[str, Any]]) -> None:
        self._send(self._prepare(batch))

    def _send(self, prepared: Prepared) -> None:
        batch, body = prepared.results, prepared.body
        self._write_lines(prepared.lines)
        if self._poster is None or body is None:
            return
        if self._give_up or (self._closing and self.clock.now() >= self._deadline):
            self._to_spool(body, batch)
            return
        started = self.clock.now()

        def deadline() -> float:
            if self._closing:
                return min(self._deadline, started + self.policy.retry_budget)
            return started + self.policy.retry_budget

        from pytest_testengine.transport import Delivered, Retry  # loaded with the poster

        answer = deliver(
            self._poster,
            body,
            content=self._poster.content(body),  # compressed once, here: off the tests' thread
            deadline=deadline,
            policy=self.policy,
            clock=self.clock,
            sleep=self._sleep,
            single=self._down,
        )
        if isinstance(answer, Delivered):
            self._down = False
            self._count("sent", len(batch))
        elif isinstance(answer, Retry):
            self._down = True
            self._give_up = self._give_up or self._closing
            self._problem(answer.reason)
            self._to_spool(body, batch)
        elif answer.status == 413 and len(batch) > 1:
            half = len(batch) // 2
            self._ship_split(batch[:half], batch[half:])
        elif answer.keep:
            self._give_up = True
            self._problem(answer.reason)
            self._to_spool(body, batch)
        else:
            self._problem(answer.reason)
            self._count("dropped", len(batch))

    def _ship_split(self, first: list[dict[str, Any]], second: list[dict[str, Any]]) -> None:
        for half in (first, second):  # their lines are already written
            self._send(self._prepare(half, output=False))

    # -- shared -----------------------------------------------------------------------------

    def _spill(self) -> None:
        """Move the oldest waiting batch to the spool (the queue is full)."""
        try:
            prepared = self._outbox.popleft()
        except IndexError:  # sent meanwhile
            return
        self._write_lines(prepared.lines)
        if self._poster is None or prepared.body is None:
            return
        self._problem(
            f"the queue of results waiting for the collector was full "
            f"({self.policy.queue_size}, TESTENGINE_QUEUE_SIZE)"
        )
        self._to_spool(prepared.body, prepared.results)

    def _write_lines(self, lines: bytes | None) -> None:
        if self._output is not None and lines is not None:
            try:
                self._output.write_lines(lines)
            except OSError as exc:
                self._problem(f"could not write {self._output.path} ({exc})")

    def _to_spool(self, body: bytes, batch: list[dict[str, Any]]) -> None:
        try:
            self._spool.write(body)
        except OSError as exc:
            self._problem(f"could not write the spool directory {self._spool.directory} ({exc})")
            self._count("dropped", len(batch))
        else:
            self._count("spooled", len(batch))

    def _count(self, kind: str, n: int) -> None:
        with self._lock:
            setattr(self.summary, kind, getattr(self.summary, kind) + n)

    def _problem(self, text: str) -> None:
        with self._lock:
            problems = self.summary.problems
            if text not in problems and len(problems) < 5:
                problems.append(text)
