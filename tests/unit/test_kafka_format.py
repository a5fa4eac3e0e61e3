"""The Kafka record format and the consumer's checks, without a broker."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from collector_server import ingest
from collector_server.consumer import check_record, decode_message
from collector_server.consumer_child import ConsumerChild, settings_of
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.kafka_records import Outgoing, outgoing_of, outgoing_of_checked
from collector_server.settings import CollectorSettings
from pytest_testengine.model import (
    Batch,
    Record,
    Result,
    RunInfo,
    decode_record,
    encode_batch,
    encode_record,
    records_of,
)

RUN = RunInfo(run_id="r1", suite="unit")
RESULT = Result(
    id="a" * 32,
    nodeid="tests/test_x.py::test_y[1]",
    file="tests/test_x.py",
    name="test_y",
    outcome="passed",
)
RECORD = Record("acme", RUN, RESULT)


def test_outgoing_carries_key_value_and_headers() -> None:
    out = Outgoing.of(RECORD)
    assert out.key == b"acme/unit/tests/test_x.py::test_y[1]"
    assert out.value == encode_record(RECORD)
    assert out.headers() == [("schema", b"1"), ("tenant", b"acme")]


@given(
    tenant=st.text(min_size=1, max_size=30),
    nodeid=st.text(min_size=1, max_size=200),
    suite=st.text(min_size=1, max_size=30),
)
def test_wal_entries_round_trip(tenant: str, nodeid: str, suite: str) -> None:
    record = Record(
        tenant,
        dataclasses.replace(RUN, suite=suite),
        dataclasses.replace(RESULT, nodeid=nodeid),
    )
    out = Outgoing.of(record)
    back = Outgoing.from_entry(out.to_entry())
    assert back == out
    assert decode_record(back.value) == record


text = st.text(max_size=40)


@given(
    tenants=st.lists(st.sampled_from(["acme", "globex", 'a"result":b']), min_size=1, max_size=6),
    run_tag=text,
    result_tag=text,
    message=st.none() | text,
)
def test_outgoing_of_a_batch_is_byte_for_byte_outgoing_of_each_record(
    tenants: list[str], run_tag: str, result_tag: str, message: str | None
) -> None:
    """The batch encoder (each run encoded once) must give exactly the records' own bytes:
    tags in mappings that are not dicts, quotes and '"result":' inside strings, two runs."""
    runs = [
        dataclasses.replace(RUN, tags={"k": run_tag, '"result":': '{"result":1}'}),
        dataclasses.replace(RUN, run_id="r2", suite=run_tag or "s", branch='"result":'),
    ]
    records = [
        Record(
            tenant,
            runs[i % 2],
            dataclasses.replace(
                RESULT,
                id=f"{i:032x}",
                message=message,
                tags=types.MappingProxyType({"t": result_tag}),
            ),
        )
        for i, tenant in enumerate(tenants)
    ]
    assert outgoing_of(records) == [Outgoing.of(r) for r in records]


def encoded(**changes: object) -> bytes:
    data = orjson.loads(encode_record(RECORD))
    for path, value in changes.items():
        section, name = path.split("__")
        data[section][name] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(None, "the record has no value", id="tombstone"),
        pytest.param(b"\xff\xfe", "JSONDecodeError: ", id="not-utf8"),
        pytest.param(
            b'{"schema": 2}',
            "ValueError: not a testengine record of schema version 1",
            id="schema-2",
        ),
        pytest.param(
            encoded(result__outcome="exploded"),
            "result.outcome 'exploded' is not one of "
            "['error', 'failed', 'passed', 'skipped', 'xfailed', 'xpassed']",
            id="outcome",
        ),
        pytest.param(encoded(result__id=""), "result.id must be a non-empty string", id="empty-id"),
        pytest.param(encoded(result__id=7), "result.id must be a non-empty string", id="int-id"),
        pytest.param(
            encoded(result__duration="1s"),
            "result.duration must be a number, not str",
            id="duration",
        ),
        pytest.param(
            encoded(run__run_id=None), "run.run_id must be a non-empty string", id="run-id"
        ),
        pytest.param(encoded(run__suite=""), "run.suite must be a non-empty string", id="suite"),
    ],
)
def test_malformed_values_are_named(value: bytes | None, problem: str) -> None:
    record, reason = decode_message(value)
    assert record is None
    assert reason is not None
    assert reason.startswith(problem)


def test_a_good_value_decodes() -> None:
    assert decode_message(encode_record(RECORD)) == (RECORD, None)
    assert check_record(RECORD) is None


def test_the_processor_child_gets_the_kafka_settings_of_serve(tmp_path: Path) -> None:
    settings = CollectorSettings(
        data_dir=tmp_path,
        kafka_bootstrap="k1:9092,k2:9092",
        kafka_topic="results",
        kafka_option=(("security.protocol", "SSL"), ("linger.ms", "2")),
        kafka_group="g",
        processor_batch=100,
        processor_linger=0.2,
    )
    command = ConsumerChild(settings).command()
    assert command[1:3] == ["-m", "collector_server.consumer_child"]
    assert settings_of(command[3]) == settings


def child_with_metrics() -> tuple[ConsumerChild, CollectorRegistry, list[tuple[int, int]]]:
    """A processor child's collector side (no process), its metrics and what it applied."""
    registry = CollectorRegistry()
    applied: list[tuple[int, int]] = []
    child = ConsumerChild(
        CollectorSettings(kafka_bootstrap="k:1", kafka_group="g"),
        metrics=KafkaMetrics(registry),
        on_applied=lambda records, new: applied.append((records, new)),
    )
    return child, registry, applied


def test_the_processor_child_status_lines_become_metrics_and_status() -> None:
    child, registry, applied = child_with_metrics()
    lines = [
        {"records": 0, "new": 0, "malformed": 0, "partitions": [], "lag": {}, "error": None},
        {"records": 100, "new": 90, "malformed": 1, "partitions": [0, 2], "lag": {"0": 5, "2": 7}},
        {"records": 150, "new": 140, "malformed": 1, "partitions": [0, 2], "lag": {"0": 0, "2": 3}},
    ]
    for line in lines:
        child._update(orjson.loads(orjson.dumps(line)))
    assert applied == [(100, 90), (50, 50)]
    value = registry.get_sample_value
    assert value("testengine_consumer_records_total") == 150
    assert value("testengine_consumer_new_results_total") == 140
    assert value("testengine_consumer_malformed_records_total") == 1
    assert value("testengine_consumer_lag_records", {"partition": "2"}) == 3
    assert child.status() == {
        "running": False,
        "kind": "kafka",
        "group": "g",
        "partitions": [0, 2],
        "lag": 3,
        "records": 150,
        "malformed": 1,
        "error": None,
        "pid": None,
        "restarts": 0,
    }


def test_a_processor_child_started_again_counts_from_zero_without_counting_twice() -> None:
    child, registry, applied = child_with_metrics()
    child._update({"records": 100, "new": 100, "malformed": 2})
    child._spawning()  # the child died and another one starts: its totals start at zero
    child._update({"records": 30, "new": 10, "malformed": 0})
    assert applied == [(100, 100), (30, 10)]
    assert registry.get_sample_value("testengine_consumer_records_total") == 130
    assert registry.get_sample_value("testengine_consumer_malformed_records_total") == 2


@given(
    tenant=st.sampled_from(["acme", 'a"result":b']),
    tag=text,
    message=st.none() | text,
    suite=st.text(min_size=1, max_size=20),
)
def test_checked_results_give_the_records_of_the_validated_batch(
    tenant: str, tag: str, message: str | None, suite: str
) -> None:
    """The Kafka sink's fast path (results as parsed, plugin-shaped dicts) must publish what
    the full path publishes: the same keys, and values that decode to the same records."""
    run = dataclasses.replace(RUN, suite=suite, tags={"run": tag})
    results = [
        dataclasses.replace(RESULT, id=f"{i:032x}", message=message, tags={"t": tag}, setup=i / 3)
        for i in range(3)
    ]
    body = encode_batch(Batch(run, results))
    checked = ingest.check_batch(orjson.loads(body), body, ingest.Limits())
    assert isinstance(checked, ingest.Checked)
    fast = outgoing_of_checked(tenant, checked.run, checked.results)
    full = outgoing_of(
        records_of(tenant, ingest.validate_batch(orjson.loads(body), ingest.Limits()))
    )
    assert [o.key for o in fast] == [o.key for o in full]
    assert [decode_record(o.value) for o in fast] == [decode_record(o.value) for o in full]
    assert [o.tenant for o in fast] == [tenant] * 3
