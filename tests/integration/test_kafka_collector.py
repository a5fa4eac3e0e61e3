"""Kafka mode through the real commands: ``testengine-collector serve --kafka-bootstrap`` (a
uvicorn process), ``testengine-collector process`` subprocesses and a real broker.

Every test counts exactly: each result answered 202 is stored once, nothing else is stored
but results whose answer was lost when a collector was killed, and the processors' own counts
add up.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_server.kafka_admin import partition_count
from tests.plugin.helpers import clean_env, summary_lines
from tests.support.collector import CollectorFactory, free_port
from tests.support.kafka import BrokerControl
from tests.support.kafka_collector import (
    SUITE,
    Poster,
    ProcessMember,
    collector_stored,
    committed,
    group_of,
    kafka_args,
    make_batch,
    store_count,
    store_ids,
    stored_ids,
    wait_stored,
)
from tests.support.kafka_io import header, produce, read_all, wait_until


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


#: serve's processor in a child process (the default) or in a thread of the collector
PROCESSOR_KINDS = [
    pytest.param([], id="processor-process"),
    pytest.param(["--processor-process", "false"], id="processor-thread"),
]


@pytest.fixture
def members() -> Iterator[list[ProcessMember]]:
    started: list[ProcessMember] = []
    yield started
    for member in started:
        member.close()


# -- serve: ingest and the in-process processor


def test_broker_stopped_mid_stream_loses_and_doubles_nothing(
    kafka_broker: BrokerControl, kafka_topic: str, collector_factory: CollectorFactory
) -> None:
    collector = collector_factory(args=kafka_args(kafka_broker.bootstrap, kafka_topic))
    with Poster(collector.url, clients=2) as poster:
        assert poster.wait_accepted(300)
        kafka_broker.stop()  # while both clients post
        before = poster.count()
        assert poster.wait_accepted(before + 300)  # accepted into the write-ahead log
        down = collector.get("/readyz")
        kafka_broker.start()
        after = poster.count()
        assert poster.wait_accepted(after + 300)
    assert down.status_code == 200  # the WAL takes the batches: still ready
    assert down.json()["sink"]["kafka"]["connected"] is False
    assert down.json()["sink"]["kafka"]["error"]
    assert down.json()["sink"]["wal"]["depth"] > 0

    results = collector_stored(collector, poster.accepted)
    assert poster.unknown == set()
    assert set(poster.statuses) == {202}
    assert stored_ids(results, poster.accepted) == poster.accepted
    assert len(results) == len(poster.accepted)
    metrics = collector.get("/metrics").text
    assert metric(metrics, "testengine_wal_appended_records_total") > 0
    assert metric(metrics, "testengine_wal_replayed_records_total") == metric(
        metrics, "testengine_wal_appended_records_total"
    )
    assert metric(metrics, "testengine_wal_depth_records") == 0
    assert metric(metrics, "testengine_results_accepted_total") == len(poster.accepted)
    assert partition_count(kafka_broker.bootstrap, kafka_topic) == 3  # created by the collector
    # records that failed delivery went through the WAL and kept their headers
    messages = read_all(kafka_broker.bootstrap, kafka_topic, expected=len(poster.accepted))
    assert {tuple(m.headers() or ()) for m in messages} == {
        (("schema", b"1"), ("tenant", b"default"))
    }


@pytest.mark.parametrize("kind", PROCESSOR_KINDS)
def test_collector_killed_mid_stream_restarts_from_kafka(
    kafka_bootstrap: str, kafka_topic: str, collector_factory: CollectorFactory, kind: list[str]
) -> None:
    collector = collector_factory(args=kafka_args(kafka_bootstrap, kafka_topic, *kind))
    child = collector.get("/readyz").json()["processor"].get("pid")
    with Poster(collector.url, clients=4) as poster:
        assert poster.wait_accepted(1000)
        collector.kill()  # SIGKILL while batches are in flight
    if child is not None:  # the processor process does not outlive its collector
        assert wait_until(lambda: not Path(f"/proc/{child}").exists(), timeout=30)
    assert poster.unknown, "no batch was in flight at the kill"
    assert len(poster.unknown) <= 4 * 50
    collector.start()

    results = collector_stored(collector, poster.accepted)
    stored = stored_ids(results, poster.accepted | poster.unknown)
    assert poster.accepted <= stored
    # a batch in flight at the kill may be in Kafka (in part), but is never stored twice
    assert len(results) == len(poster.accepted) + len(stored & poster.unknown)


def test_a_killed_kafka_processor_process_is_started_again_and_catches_up(
    kafka_bootstrap: str, kafka_topic: str, collector_factory: CollectorFactory
) -> None:
    collector = collector_factory(args=kafka_args(kafka_bootstrap, kafka_topic))
    first = make_batch(20)
    assert collector.post_batch(first).status_code == 202
    collector_stored(collector, {r.id for r in first.results})
    pid = collector.get("/readyz").json()["processor"]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30)
    # accepted meanwhile: in Kafka, stored by the next processor process (same group)
    second = make_batch(30)
    assert collector.post_batch(second).status_code == 202
    results = collector_stored(collector, {r.id for r in [*first.results, *second.results]})
    assert len(results) == 50
    ready = collector.get("/readyz").json()["processor"]
    assert ready["restarts"] == 1
    assert ready["pid"] != pid
    assert ready["running"] is True
    assert "Kafka processor process exited with status -9; restarting it" in collector.output()
    assert metric(collector.get("/metrics").text, "testengine_consumer_records_total") >= 50


def test_collector_killed_with_a_full_wal_replays_it_after_restart(
    kafka_bootstrap: str, kafka_topic: str, collector_factory: CollectorFactory
) -> None:
    """Kafka unreachable: batches go to the WAL until it is full (503 + Retry-After, /readyz
    503); the collector is SIGKILLed; restarted with a reachable broker it replays them all."""
    nowhere = f"127.0.0.1:{free_port()}"
    limits = ["--wal-max-bytes", "100KiB", "--retry-after", "7"]
    collector = collector_factory(args=kafka_args(nowhere, kafka_topic, *limits))
    with Poster(collector.url, clients=2, stop_on_refusal=True) as poster:
        assert wait_until(lambda: len(poster.refusals) == 2, timeout=30)
    ready = collector.get("/readyz")
    collector.kill()

    status, retry_after, body = poster.refusals[0]
    assert (status, retry_after) == (503, "7")
    assert body["error"]["code"] == "sink_unavailable"
    assert body["error"]["message"].startswith("[testengine] write-ahead log full: ")
    assert body["error"]["message"].endswith(
        "limit 102400 bytes; it drains when Kafka accepts records again"
    )
    assert ready.status_code == 503
    sink = ready.json()["sink"]
    assert sink["kafka"]["connected"] is False
    assert sink["wal"]["full"] is True
    assert sink["wal"]["limit_bytes"] == 102400
    assert sink["wal"]["depth"] == len(poster.accepted)  # exactly the batches answered 202
    assert 0 < sink["wal"]["bytes"] <= 102400

    collector.args = kafka_args(kafka_bootstrap, kafka_topic, *limits)
    collector.start()
    results = collector_stored(collector, poster.accepted)
    assert stored_ids(results, poster.accepted) == poster.accepted
    assert len(results) == len(poster.accepted)
    metrics = collector.get("/metrics").text
    assert metric(metrics, "testengine_wal_replayed_records_total") == len(poster.accepted)
    assert collector.get("/readyz").status_code == 200


@pytest.mark.parametrize("kind", PROCESSOR_KINDS)
def test_malformed_record_from_another_producer_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, kafka_topic: str, collector_factory: CollectorFactory, kind: list[str]
) -> None:
    collector = collector_factory(
        args=kafka_args(kafka_bootstrap, kafka_topic, *kind, partitions=1)
    )
    first, second = make_batch(20), make_batch(20)
    assert collector.post_batch(first).status_code == 202
    produce(kafka_bootstrap, kafka_topic, [b"not json at all"])
    assert collector.post_batch(second).status_code == 202

    accepted = {r.id for r in [*first.results, *second.results]}
    results = collector_stored(collector, accepted)
    assert stored_ids(results, accepted) == accepted
    assert len(results) == 40
    ready = collector.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["processor"]["running"] is True
    assert ready.json()["processor"]["malformed"] == 1
    metrics = collector.get("/metrics").text
    assert metric(metrics, "testengine_consumer_malformed_records_total") == 1
    assert metric(metrics, "testengine_consumer_records_total") == 40
    assert metric(metrics, "testengine_kafka_delivered_records_total") == 40
    assert metric(metrics, "testengine_kafka_produce_seconds_count") == 2  # one per batch
    assert (
        f"[testengine] malformed record at {kafka_topic}[0]@20 moved to {kafka_topic}.dlq: "
        "JSONDecodeError" in collector.output()
    )
    [dead] = read_all(kafka_bootstrap, f"{kafka_topic}.dlq", expected=1)
    assert dead.value() == b"not json at all"
    assert header(dead, "testengine.error").startswith(b"JSONDecodeError")
    assert header(dead, "testengine.source.topic") == kafka_topic.encode()
    assert header(dead, "testengine.source.offset") == b"20"


def test_plugin_results_reach_the_store_through_kafka(
    kafka_bootstrap: str,
    kafka_topic: str,
    collector_factory: CollectorFactory,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = collector_factory(  # the bootstrap by the name the product promises
        args=kafka_args(None, kafka_topic), env={"TESTENGINE_KAFKA_BOOTSTRAP": kafka_bootstrap}
    )
    assert collector.get("/readyz").json()["sink"]["kafka"]["bootstrap"] == kafka_bootstrap
    clean_env(monkeypatch)
    monkeypatch.setenv("TESTENGINE_URL", collector.url)
    monkeypatch.setenv("TESTENGINE_SUITE", SUITE)
    pytester.makepyfile(
        test_k="""
        import pytest

        @pytest.mark.parametrize("n", range(30))
        def test_n(n):
            assert n != 7
        """
    )
    run = pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=29, failed=1)
    assert summary_lines(run.outlines) == [f"[testengine] sent 30 results to {collector.url}"]
    assert wait_until(lambda: len(collector.results(SUITE)) >= 30, timeout=30)
    results = collector_stored(collector, set())  # and the processor caught up
    assert len(results) == 30
    assert {r["nodeid"] for r in results} == {f"test_k.py::test_n[{n}]" for n in range(30)}
    assert [r["nodeid"] for r in results if r["outcome"] == "failed"] == ["test_k.py::test_n[7]"]


# -- process: consumer group members


def test_process_killed_mid_consume_resumes_from_committed_offsets(
    kafka_bootstrap: str,
    kafka_topic: str,
    collector_factory: CollectorFactory,
    members: list[ProcessMember],
    tmp_path: Path,
) -> None:
    total = 20_000
    ingest = collector_factory(args=kafka_args(kafka_bootstrap, kafka_topic, "--processor", "0"))
    for _ in range(total // 500):
        assert ingest.post_batch(make_batch(500)).status_code == 202
    data, log = tmp_path / "processed", tmp_path / "process.log"
    small = ["--processor-batch", "100", "--processor-linger", "0"]
    first = ProcessMember(kafka_args(kafka_bootstrap, kafka_topic, *small), data, log).start()
    members.append(first)
    first.wait_output("[testengine] processor consuming ")
    assert wait_stored(data, 2000) >= 2000, first.output()[-3000:]
    first.freeze()  # stopped mid-consume: no write or commit happens after this point
    offsets = committed(kafka_bootstrap, kafka_topic, group_of(kafka_topic), partitions=3)
    first.kill()
    # counted after the kill: a transaction whose commit reached the log file just before the
    # stop is visible only once SQLite recovers the log, as the next process will
    at_kill = store_count(data)
    assert at_kill < total, "the processor finished before it was killed"
    # stored and not committed: at most the batch being written and the one whose commit
    # was under way
    assert 0 < offsets <= at_kill <= offsets + 200

    second = ProcessMember(kafka_args(kafka_bootstrap, kafka_topic), data, log).start()
    members.append(second)
    assert wait_stored(data, total) == total, second.output()[-3000:]
    consumed, new, malformed = second.terminate()

    ids = store_ids(data)
    assert len(ids) == len(set(ids)) == total
    assert (consumed, new, malformed) == (total - offsets, total - at_kill, 0)
    assert committed(kafka_bootstrap, kafka_topic, group_of(kafka_topic), partitions=3) == total


def test_one_of_two_process_members_leaves_and_nothing_is_lost_or_doubled(
    kafka_bootstrap: str,
    kafka_topic: str,
    collector_factory: CollectorFactory,
    members: list[ProcessMember],
    tmp_path: Path,
) -> None:
    ingest = collector_factory(
        args=kafka_args(kafka_bootstrap, kafka_topic, "--processor", "false", partitions=4)
    )
    data, args = tmp_path / "processed", kafka_args(kafka_bootstrap, kafka_topic, partitions=4)
    leaving = ProcessMember(args, data, tmp_path / "leaving.log").start()
    members.append(leaving)
    leaving.wait_output(" assigned ")
    staying = ProcessMember(args, data, tmp_path / "staying.log").start()
    members.append(staying)
    staying.wait_output(" assigned ")  # the group rebalanced: two partitions each
    assert wait_until(lambda: leaving.assignments() >= 2, timeout=30), leaving.output()

    for _ in range(10):
        assert ingest.post_batch(make_batch(200)).status_code == 202
    assert wait_stored(data, 2000) == 2000
    left = leaving.terminate()  # commits what it stored, leaves the group
    for _ in range(10):
        assert ingest.post_batch(make_batch(200)).status_code == 202
    assert wait_stored(data, 4000) == 4000
    kept = staying.terminate()

    ids = store_ids(data)
    assert len(ids) == len(set(ids)) == 4000
    assert left[0] > 0, "the leaving member consumed nothing"
    assert kept[0] > left[0]
    assert left[0] + kept[0] == 4000  # nothing consumed twice
    assert left[1] + kept[1] == 4000
    assert committed(kafka_bootstrap, kafka_topic, group_of(kafka_topic), partitions=4) == 4000
