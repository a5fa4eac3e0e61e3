"""Checked batches: stored as sent, decoded to exactly the records full validation gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette

from collector_server import ingest
from collector_server.app import create_app
from collector_server.errors import IngestError
from collector_server.settings import CollectorSettings
from collector_server.sinks.local import LocalLogSink, decode_entry, encode_body_entry
from pytest_testengine.model import records_of
from tests.collector.batches import GZIP_JSON, JSON, batch, body, encode
from tests.collector.conftest import caught_up, collector_of, serving

LIMITS = ingest.Limits()


def checked_records(obj: dict[str, Any], tenant: str = "t") -> list[Any]:
    raw = encode(obj)
    got = ingest.check_batch(orjson.loads(raw), raw, LIMITS)
    assert isinstance(got, ingest.Checked)
    assert got.count == len(obj["results"])
    return decode_entry(encode_body_entry(tenant, got.run, got.body))


def test_plugin_shaped_batch_is_kept_as_sent_and_decodes_like_validation() -> None:
    obj = body(batch(5))
    obj["run"]["unknown_run_key"] = "ignored"
    expected = records_of("t", ingest.validate_batch(obj, LIMITS))
    assert checked_records(obj) == expected


def test_body_entry_uses_the_validated_run_not_the_raw_one() -> None:
    obj = body(batch(2))
    del obj["run"]["suite"]  # validation defaults it
    records = checked_records(obj)
    assert {r.run.suite for r in records} == {"default"}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: r.update(extra="x"), id="unknown-key"),
        pytest.param(lambda r: r.pop("scope"), id="missing-key"),
        pytest.param(lambda r: r.update(call=1), id="integer-seconds"),
        pytest.param(lambda r: r.update(tags=None), id="null-tags"),
    ],
)
def test_other_valid_results_go_through_full_validation(change: Any) -> None:
    obj = body(batch(3))
    change(obj["results"][1])
    raw = encode(obj)
    got = ingest.check_batch(orjson.loads(raw), raw, LIMITS)
    assert isinstance(got, ingest.Batch)
    assert got == ingest.validate_batch(orjson.loads(raw), LIMITS)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda o: o["results"][0].update(outcome="maybe"), id="bad-outcome"),
        pytest.param(lambda o: o["results"][2].update(id=""), id="empty-id"),
        pytest.param(lambda o: o["run"].update(run_id=5), id="bad-run"),
        pytest.param(lambda o: o.update(schema=2), id="schema"),
        pytest.param(lambda o: o.update(results={}), id="results-object"),
    ],
)
def test_invalid_batches_fail_alike(change: Any) -> None:
    obj = body(batch(3))
    change(obj)
    with pytest.raises(IngestError) as full:
        ingest.validate_batch(obj, LIMITS)
    with pytest.raises(IngestError) as checked:
        ingest.check_batch(obj, encode(obj), LIMITS)
    assert (checked.value.status, checked.value.code, checked.value.field) == (
        full.value.status,
        full.value.code,
        full.value.field,
    )
    assert str(checked.value) == str(full.value)


@pytest.mark.anyio
@pytest.mark.parametrize("process", [True, False], ids=["child-process", "thread"])
async def test_both_processor_modes_store_what_was_accepted(tmp_path: Path, process: bool) -> None:
    settings = CollectorSettings(data_dir=tmp_path / "data", processor_process=process)
    app: Starlette = create_app(settings)
    sent = batch(7, suite="modes")
    odd = body(batch(2, suite="modes"))
    odd["results"][0]["extra"] = "x"  # not plugin-shaped: the Record path
    zipped = batch(3, suite="modes")
    async with serving(app) as client:
        for payload, compress in ((body(sent), False), (odd, False), (body(zipped), True)):
            response = await client.post(
                "/v1/results",
                content=encode(payload, compress=compress),
                headers=GZIP_JSON if compress else JSON,
            )
            assert response.status_code == 202, response.text
        await caught_up(app)
        stored = (await client.get("/v1/suites/modes/results")).json()["items"]
        ready = (await client.get("/readyz")).json()
        sink = collector_of(app).parts.sink
        assert isinstance(sink, LocalLogSink)
        entries = [data for _, data in sink.log.iter_from(0, 10)]
    # the plugin-shaped batches are logged as they came in both modes (no Result per result),
    # a gzipped one with its rows; the other one as records
    assert [e[:6] for e in entries] == [b'{"v":2', b'{"v":1', b'{"v":4']
    assert len(stored) == 12
    assert {r["id"] for r in stored} >= {r.id for r in [*sent.results, *zipped.results]}
    assert ready["processor"]["running"] is True
    assert (ready["processor"].get("pid") is not None) is process
