"""collector_server.ingest as pure functions: gzip handling and validation."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_server import ingest
from collector_server.errors import IngestError
from tests.collector.batches import batch, body

LIMITS = ingest.Limits()


def test_gunzip_reads_several_members_and_stops_at_the_limit() -> None:
    data = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 1000)
    assert ingest.gunzip(data, 2000) == b"a" * 1000 + b"b" * 1000
    with pytest.raises(IngestError) as info:
        ingest.gunzip(data, 1999)
    assert (info.value.status, info.value.code) == (413, "decompressed_too_large")


def test_gunzip_rejects_garbage_after_a_member() -> None:
    with pytest.raises(IngestError) as info:
        ingest.gunzip(gzip.compress(b"{}") + b"garbage", 100)
    assert (info.value.status, info.value.code) == (400, "invalid_gzip")


def test_identity_body_over_the_decompressed_limit() -> None:
    with pytest.raises(IngestError) as info:
        ingest.parse_batch(
            b"[" + b" " * 100 + b"]",
            content_type="application/json",
            content_encoding=None,
            limits=ingest.Limits(max_decompressed_bytes=50),
        )
    assert info.value.status == 413


def test_valid_batch_becomes_model_objects() -> None:
    sent = batch(3)
    got = ingest.validate_batch(body(sent), LIMITS)
    assert got.run == sent.run
    assert list(got.results) == list(sent.results)


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    obj = body(batch(1))
    obj["results"][0].update(setup=0, call=2, duration=2, start=5, stop=7)
    (result,) = ingest.validate_batch(obj, LIMITS).results
    assert (result.call, result.stop) == (2.0, 7.0)
    assert type(result.call) is float


def test_defaults_for_optional_fields() -> None:
    minimal = {"id": "x", "nodeid": "t.py::t", "outcome": "skipped"}
    result = ingest.validate_result(minimal, "results[0]", LIMITS)
    assert (result.file, result.duration, result.attempt, result.tags) == ("", 0.0, 1, {})
    run = ingest.validate_run({"run_id": "r", "suite": None}, LIMITS)
    assert (run.suite, run.branch, run.tags) == ("default", None, {})


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-1.0, 2e12),
    st.text(max_size=6),
    st.sampled_from(["passed", "call", "x" * 200]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(list(body(batch(1))["results"][0])), values))
def test_fast_and_careful_validation_agree(changes: dict[str, Any]) -> None:
    obj = {**body(batch(1))["results"][0], **changes}
    limits = ingest.Limits(max_string=100, max_tags=2)

    def outcome(check: Any) -> object:
        try:
            return check(obj, "results[0]", limits)
        except IngestError as exc:
            return (exc.status, exc.code, exc.field)

    assert outcome(ingest.validate_result) == outcome(ingest._validate_result_slowly)
