"""The sender: batching policy (fake clock), retries, deadline, spool, bounded queue."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pytest_testengine.output import OutputFile
from pytest_testengine.recording import summary_line
from pytest_testengine.sender import Converter, Policy, Sender, Summary, deliver
from pytest_testengine.spool import Spool
from pytest_testengine.transport import Answer, Delivered, Rejected, Retry

RUN = {"run_id": "r1", "suite": "default"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class FakePoster:
    """Answers from a script (then Delivered); records every body it was given."""

    url = "http://collector.test"

    def __init__(
        self, answers: list[Answer] | None = None, *, default: Answer | None = None
    ) -> None:
        self.answers = list(answers or [])
        self.default = default or Delivered(202)
        self.bodies: list[dict[str, Any]] = []
        self.timeouts: list[float | None] = []
        self.contents: list[bytes | None] = []
        self.compressed_on: list[str] = []
        self.closed = False
        self.gate: threading.Event | None = None

    def content(self, body: bytes) -> bytes:
        self.compressed_on.append(threading.current_thread().name)
        return b"wire:" + body

    def post(
        self, body: bytes, *, timeout: float | None = None, content: bytes | None = None
    ) -> Answer:
        assert content in (None, b"wire:" + body)  # what content() made of this body
        self.contents.append(content)
        if self.gate is not None:
            self.gate.wait(10)
        self.bodies.append(orjson.loads(body))
        self.timeouts.append(timeout)
        return self.answers.pop(0) if self.answers else self.default

    def close(self) -> None:
        self.closed = True

    def sizes(self) -> list[int]:
        return [len(b["results"]) for b in self.bodies]


def results(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"id{i}", "nodeid": f"t.py::test_{i}"} for i in range(start, start + n)]


# -- deliver ---------------------------------------------------------------------------------


def _deliver(
    poster: FakePoster,
    clock: FakeClock,
    *,
    budget: float = 10.0,
    single: bool = False,
    policy: Policy | None = None,
) -> tuple[Answer, list[float]]:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    end = clock.now() + budget
    answer = deliver(
        poster,
        b'{"results": []}',
        deadline=lambda: end,
        policy=policy or Policy(backoff=0.2, max_backoff=5.0),
        clock=clock,
        sleep=sleep,
        single=single,
    )
    return answer, sleeps


def test_retries_transient_failures_with_jittered_exponential_backoff() -> None:
    poster = FakePoster([Retry("down")] * 4)
    answer, sleeps = _deliver(poster, FakeClock(), budget=100.0)
    assert answer == Delivered(202)
    assert len(poster.bodies) == 5
    assert len(sleeps) == 4
    for attempt, seconds in enumerate(sleeps, start=1):
        assert 0 <= seconds <= min(0.2 * 2**attempt, 5.0)


def test_retry_after_is_honoured() -> None:
    poster = FakePoster([Retry("429", retry_after=1.5), Retry("503", retry_after=0.25)])
    answer, sleeps = _deliver(poster, FakeClock())
    assert answer == Delivered(202)
    assert sleeps == [1.5, 0.25]


def test_gives_up_rather_than_sleep_past_the_deadline() -> None:
    clock = FakeClock()
    poster = FakePoster(default=Retry("down", retry_after=3.0))
    start = clock.now()
    answer, sleeps = _deliver(poster, clock, budget=10.0)
    assert answer == Retry("down", retry_after=3.0)
    assert sleeps == [3.0, 3.0, 3.0]
    assert clock.now() - start <= 10.0
    assert len(poster.bodies) == 4


def test_each_attempt_timeout_is_capped_by_what_is_left_of_the_deadline() -> None:
    poster = FakePoster([Retry("a", retry_after=4.0)])
    _deliver(poster, FakeClock(), budget=10.0)
    assert poster.timeouts == [pytest.approx(10.0), pytest.approx(6.0)]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Rejected(422, "invalid", keep=False), id="422"),
        pytest.param(Rejected(401, "token", keep=True), id="401"),
    ],
)
def test_rejections_are_not_retried(answer: Answer) -> None:
    poster = FakePoster([answer])
    got, sleeps = _deliver(poster, FakeClock())
    assert got == answer
    assert sleeps == []


def test_single_mode_makes_one_attempt() -> None:
    poster = FakePoster([Retry("down")])
    answer, sleeps = _deliver(poster, FakeClock(), single=True)
    assert answer == Retry("down")
    assert sleeps == []


# -- Sender ----------------------------------------------------------------------------------


def make_sender(
    tmp_path: Path, poster: FakePoster | None, converter: Converter | None = None, **policy: Any
) -> Sender:
    sender = Sender(
        run=RUN,
        poster=poster,
        spool=Spool(tmp_path / "spool"),
        converter=converter,
        policy=Policy(
            **{
                "batch_age": 60.0,
                "flush_deadline": 2.0,
                "retry_budget": 2.0,
                "backoff": 0.01,
                **policy,
            }
        ),
    )
    sender.start()
    return sender


def spooled(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        r
        for p in Spool(tmp_path / "spool").files()
        for r in orjson.loads(p.read_bytes())["results"]
    ]


def test_sends_everything_in_batches_with_the_run_context(tmp_path: Path) -> None:
    poster = FakePoster()
    sender = make_sender(tmp_path, poster, batch_size=500)
    for r in results(1050):
        sender.submit(r)
    summary = sender.close()
    assert (summary.submitted, summary.sent, summary.spooled, summary.dropped) == (1050, 1050, 0, 0)
    assert poster.sizes() == [500, 500, 50]
    assert poster.bodies[0]["schema"] == 1
    assert poster.bodies[0]["run"] == RUN
    assert [r["id"] for b in poster.bodies for r in b["results"]] == [f"id{i}" for i in range(1050)]
    assert None not in poster.contents
    # compressed by the sender thread, not the tests' (zlib works there while tests run)
    assert poster.compressed_on == ["testengine-sender"] * 3
    assert poster.closed
    assert spooled(tmp_path) == []


def test_a_partial_batch_is_sent_once_it_is_old_enough(tmp_path: Path) -> None:
    poster = FakePoster()
    sender = make_sender(tmp_path, poster, batch_size=100, batch_age=0.05)
    for r in results(3):
        sender.submit(r)
    deadline = time.monotonic() + 10
    while not poster.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert poster.sizes() == [3]
    sender.close()


def test_collector_down_everything_goes_to_the_spool_within_the_deadline(tmp_path: Path) -> None:
    poster = FakePoster(
        default=Retry("could not reach the collector at X (connection refused)", unreachable=True)
    )
    sender = make_sender(tmp_path, poster, batch_size=10, flush_deadline=0.5, retry_budget=0.5)
    for r in results(95):
        sender.submit(r)
    started = time.monotonic()
    summary = sender.close()
    assert time.monotonic() - started < 0.5 + 1.5
    assert (summary.sent, summary.spooled, summary.dropped) == (0, 95, 0)
    assert summary.problems == ["could not reach the collector at X (connection refused)"]
    assert sorted(r["id"] for r in spooled(tmp_path)) == sorted(f"id{i}" for i in range(95))


def test_a_zero_deadline_spools_at_once(tmp_path: Path) -> None:
    poster = FakePoster()
    poster.gate = threading.Event()  # the collector never answers in time
    sender = make_sender(tmp_path, poster, batch_size=1000, flush_deadline=0.0)
    for r in results(5):
        sender.submit(r)
    summary = sender.close()
    poster.gate.set()
    assert (summary.sent, summary.spooled) == (0, 5)


def test_recovers_after_transient_errors(tmp_path: Path) -> None:
    poster = FakePoster(
        [
            Retry("the collector answered 500 (boom)"),
            Retry("the collector answered 429 (slow down)", retry_after=0.01),
        ]
    )
    sender = make_sender(tmp_path, poster, batch_size=10)
    for r in results(30):
        sender.submit(r)
    summary = sender.close()
    assert (summary.sent, summary.spooled, summary.dropped) == (30, 0, 0)
    assert summary.problems == []
    assert poster.sizes() == [10, 10, 10, 10, 10]
    assert len(poster.compressed_on) == 3  # once per batch, not per attempt


def test_an_invalid_batch_is_dropped_and_reported(tmp_path: Path) -> None:
    poster = FakePoster(
        [Rejected(422, "the collector rejected the batch with 422 (invalid)", keep=False)]
    )
    sender = make_sender(tmp_path, poster, batch_size=10)
    for r in results(20):
        sender.submit(r)
    summary = sender.close()
    assert (summary.sent, summary.spooled, summary.dropped) == (10, 0, 10)
    assert summary.problems == ["the collector rejected the batch with 422 (invalid)"]


def test_a_bad_token_spools_everything_without_trying_again(tmp_path: Path) -> None:
    poster = FakePoster(
        default=Rejected(401, "the collector rejected the batch with 401 (bad token)", keep=True)
    )
    sender = make_sender(tmp_path, poster, batch_size=10)
    for r in results(30):
        sender.submit(r)
    summary = sender.close()
    assert (summary.sent, summary.spooled, summary.dropped) == (0, 30, 0)
    assert len(poster.bodies) == 1


def test_a_batch_too_large_is_split(tmp_path: Path) -> None:
    poster = FakePoster(
        [Rejected(413, "too large", keep=False), Rejected(413, "too large", keep=False)]
    )
    sender = make_sender(tmp_path, poster, batch_size=8)
    for r in results(8):
        sender.submit(r)
    summary = sender.close()
    assert (summary.sent, summary.dropped) == (8, 0)
    assert poster.sizes() == [8, 4, 2, 2, 4]


def test_a_full_queue_spills_to_the_spool_instead_of_growing(tmp_path: Path) -> None:
    poster = FakePoster()
    poster.gate = threading.Event()  # the collector hangs: nothing leaves the queue
    sender = make_sender(tmp_path, poster, batch_size=10, queue_size=50, flush_deadline=5.0)
    for r in results(1000):
        sender.submit(r)
        assert len(sender._pending) <= 50
    poster.gate.set()
    summary = sender.close()
    assert summary.submitted == 1000
    assert summary.sent + summary.spooled == 1000
    assert summary.spooled >= 900
    assert summary.problems == [
        "the queue of results waiting for the collector was full (50, TESTENGINE_QUEUE_SIZE)"
    ]
    sent_ids = {r["id"] for b in poster.bodies for r in b["results"]}
    spooled_ids = {r["id"] for r in spooled(tmp_path)}
    assert sent_ids.isdisjoint(spooled_ids)
    assert sent_ids | spooled_ids == {f"id{i}" for i in range(1000)}


def test_an_unwritable_spool_counts_as_dropped(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("a file, not a directory")
    poster = FakePoster(default=Retry("down"))
    sender = make_sender(tmp_path, poster, batch_size=10, flush_deadline=0.2, retry_budget=0.2)
    for r in results(10):
        sender.submit(r)
    summary = sender.close()
    assert (summary.sent, summary.spooled, summary.dropped) == (0, 0, 10)
    assert summary.problems[1].startswith(
        f"could not write the spool directory {tmp_path / 'spool'} ("
    )


def test_output_file_without_a_collector(tmp_path: Path) -> None:
    out = tmp_path / "out" / "results.jsonl"
    sender = Sender(
        run=RUN,
        poster=None,
        spool=Spool(tmp_path / "spool"),
        output=OutputFile(out, RUN),
        policy=Policy(batch_size=7),
    )
    sender.start()
    for r in results(20):
        sender.submit(r)
    summary = sender.close()
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines[0] == {"schema": 1, "run": RUN}
    assert [line["result"]["id"] for line in lines[1:]] == [f"id{i}" for i in range(20)]
    assert (summary.written, summary.sent, summary.url, summary.output) == (20, 0, None, str(out))
    assert not (tmp_path / "spool").exists()


# -- the summary line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "line"),
    [
        pytest.param(
            Summary(url="http://c:8765", submitted=3, sent=3),
            "[testengine] sent 3 results to http://c:8765",
            id="sent",
        ),
        pytest.param(
            Summary(url="http://c:8765", submitted=1, sent=1),
            "[testengine] sent 1 result to http://c:8765",
            id="sent-one",
        ),
        pytest.param(
            Summary(
                url="http://c:8765",
                sent=2,
                spooled=5,
                spool_dir="/w/.testengine/spool",
                problems=["could not reach the collector at http://c:8765 (connection refused)"],
            ),
            "[testengine] sent 2 results to http://c:8765; could not reach the collector at "
            "http://c:8765 (connection refused); spooled 5 results to /w/.testengine/spool; send "
            "them with: testengine upload --spool /w/.testengine/spool --url http://c:8765",
            id="spooled",
        ),
        pytest.param(
            Summary(url="http://c", spooled=1, spool_dir="/my dir/spool"),
            "[testengine] sent 0 results to http://c; spooled 1 result to /my dir/spool; send "
            "them with: testengine upload --spool '/my dir/spool' --url http://c",
            id="spool-path-with-a-space-is-quoted",
        ),
        pytest.param(
            Summary(
                url="http://c",
                sent=1,
                dropped=4,
                problems=["the collector rejected the batch with 422 (x)"],
            ),
            "[testengine] sent 1 result to http://c; the collector rejected the batch with 422 "
            "(x); dropped 4 results (see docs/troubleshooting.md#results-were-dropped)",
            id="dropped",
        ),
        pytest.param(
            Summary(output="/w/out.jsonl", written=7),
            "[testengine] wrote 7 results to /w/out.jsonl",
            id="output-only",
        ),
        pytest.param(
            Summary(url="http://c", sent=7, output="out.jsonl", written=7),
            "[testengine] sent 7 results to http://c; wrote 7 results to out.jsonl",
            id="both",
        ),
    ],
)
def test_summary_line(summary: Summary, line: str) -> None:
    assert summary_line(summary, [], 0) == line


def test_summary_line_mentions_tags_left_out() -> None:
    line = summary_line(
        Summary(url="http://c", sent=2),
        ["t.py::test_a: 3 over the limit of 50 tags (TESTENGINE_MAX_TAGS)"],
        2,
    )
    assert line == (
        "[testengine] sent 2 results to http://c; tags left out for 2 tests "
        "(t.py::test_a: 3 over the limit of 50 tags (TESTENGINE_MAX_TAGS))"
    )


def test_close_cuts_a_long_retry_after_short_instead_of_retrying_early(tmp_path: Path) -> None:
    poster = FakePoster(default=Retry("the collector answered 429 (busy)", retry_after=30.0))
    sender = make_sender(tmp_path, poster, batch_size=1, flush_deadline=0.5, retry_budget=60.0)
    sender.submit(results(1)[0])
    deadline = time.monotonic() + 10
    while not poster.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    summary = sender.close()
    assert time.monotonic() - started < 0.5 + 1.0
    assert len(poster.bodies) == 1  # no early retry against the collector's Retry-After
    assert (summary.sent, summary.spooled) == (0, 1)
    assert summary.problems == ["the collector answered 429 (busy)"]


class Pairs:
    """A converter: items ("start", n) and ("end", n) make result n at its "end"."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.calls: list[tuple[str, int]] = []  # (thread, items) of each convert()

    def convert(self, items: list[Any]) -> list[dict[str, Any]]:
        self.calls.append((threading.current_thread().name, len(items)))
        out = []
        for kind, n in items:
            if kind == "start":
                self.open.add(n)
            else:
                self.open.discard(n)
                out.append({"id": f"id{n}"})
        return out

    def unfinished(self) -> list[dict[str, Any]]:
        rest = [{"id": f"id{n}", "unfinished": True} for n in sorted(self.open)]
        self.open.clear()
        return rest


def submit_pairs(sender: Sender, count: int) -> None:
    for n in range(count):
        sender.submit(("start", n))
        sender.submit(("end", n))


def test_a_converter_turns_items_into_results_a_batch_at_a_time(tmp_path: Path) -> None:
    poster = FakePoster()
    pairs = Pairs()
    sender = make_sender(tmp_path, poster, pairs, batch_size=40, batch_age=60.0)
    submit_pairs(sender, 100)
    sender.submit(("start", 100))  # never ends: an interrupted test
    summary = sender.close()
    assert (summary.submitted, summary.sent, summary.spooled) == (101, 101, 0)
    assert poster.sizes() == [40, 40, 21]
    sent = [r["id"] for b in poster.bodies for r in b["results"]]
    assert sent == [f"id{n}" for n in range(101)]
    assert poster.bodies[-1]["results"][-1] == {"id": "id100", "unfinished": True}
    # on the submitting thread, a batch of items at a time; the last item at the close
    assert pairs.calls[:5] == [("MainThread", 40)] * 5
    assert [n for _, n in pairs.calls[5:]] == [1]


def test_items_a_slow_test_keeps_waiting_are_converted_by_the_sender_when_due(
    tmp_path: Path,
) -> None:
    poster = FakePoster()
    pairs = Pairs()
    sender = make_sender(tmp_path, poster, pairs, batch_size=40, batch_age=0.05)
    submit_pairs(sender, 3)
    deadline = time.monotonic() + 10
    while not poster.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert poster.sizes() == [3]
    assert pairs.calls[0] == ("testengine-sender", 6)
    sender.close()


def test_a_full_queue_of_items_is_converted_before_it_is_spooled(tmp_path: Path) -> None:
    poster = FakePoster()
    poster.gate = threading.Event()  # the collector hangs
    sender = make_sender(tmp_path, poster, Pairs(), batch_size=10, queue_size=40, batch_age=60.0)
    for n in range(200):
        sender.submit(("start", n))
        sender.submit(("end", n))
        assert len(sender._pending) <= 40
    poster.gate.set()
    summary = sender.close()
    assert (summary.submitted, summary.sent + summary.spooled) == (200, 200)
    ids = [r["id"] for b in poster.bodies for r in b["results"]] + [
        r["id"] for r in spooled(tmp_path)
    ]
    assert sorted(ids) == sorted(f"id{n}" for n in range(200))


def test_results_due_on_the_sender_thread_and_full_batches_on_the_caller_never_collide(
    tmp_path: Path,
) -> None:
    poster = FakePoster()
    # a tiny batch age keeps the sender thread taking due results while the caller converts
    # and batches: every result must still be sent once, and the thread must not fail
    sender = make_sender(tmp_path, poster, Pairs(), batch_size=7, batch_age=0.0002)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        submit_pairs(sender, 20_000)
    finally:
        sys.setswitchinterval(interval)
    summary = sender.close()
    assert summary.problems == []
    sent = [r["id"] for b in poster.bodies for r in b["results"]]
    assert len(sent) == summary.sent == 20_000
    assert set(sent) == {f"id{n}" for n in range(20_000)}


def test_a_queue_of_one_batch_spools_nothing_while_the_batch_waits(tmp_path: Path) -> None:
    sender = make_sender(tmp_path, FakePoster(), batch_size=2, queue_size=2)  # not started
    sender.submit({"id": "a"})
    sender.submit({"id": "b"})  # one full batch: the queue holds it, nothing more
    assert len(sender._outbox) == 1
    assert spooled(tmp_path) == []


class HeldSplit(FakePoster):
    """Answers 413 to the first batch, and holds the first half of its split until told."""

    def __init__(self) -> None:
        super().__init__([Rejected(413, "too large", keep=False)])
        self.splitting, self.release = threading.Event(), threading.Event()

    def post(
        self, body: bytes, *, timeout: float | None = None, content: bytes | None = None
    ) -> Answer:
        answer = super().post(body, timeout=timeout, content=content)
        if len(self.bodies) == 2:
            self.splitting.set()
            self.release.wait(10)
        return answer


def test_lines_of_a_batch_prepared_while_another_is_split_are_written(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    poster = HeldSplit()
    sender = Sender(
        run=RUN,
        poster=poster,
        spool=Spool(tmp_path / "spool"),
        output=OutputFile(out, RUN),
        policy=Policy(batch_size=4, batch_age=60.0, flush_deadline=5.0),
    )
    sender.start()
    for r in results(4):
        sender.submit(r)  # answered 413, then split in two on the sender thread
    assert poster.splitting.wait(10)
    for r in results(4, start=4):
        sender.submit(r)  # a full batch prepared on this thread meanwhile
    poster.release.set()
    summary = sender.close()
    assert (summary.sent, summary.written) == (8, 8)
    assert len(out.read_bytes().splitlines()) == 1 + 8  # the run line, then every result


def test_a_first_attempt_that_is_delivered_does_not_import_the_retry_machinery() -> None:
    script = (
        "import sys\n"
        "from pytest_testengine.sender import Policy, deliver\n"
        "from pytest_testengine.transport import Delivered\n"
        "class Poster:\n"
        "    url = 'http://127.0.0.1:9'\n"
        "    def post(self, body, *, timeout=None, content=None):\n"
        "        return Delivered(202, 0)\n"
        "class Clock:\n"
        "    def now(self):\n"
        "        return 0.0\n"
        "answer = deliver(Poster(), b'{}', deadline=lambda: 10.0, policy=Policy(), clock=Clock())\n"
        "assert answer == Delivered(202, 0), answer\n"
        "print('tenacity' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
