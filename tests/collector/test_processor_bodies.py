"""The in-process processor subscribed to a sink that publishes bodies (no records handed
over): what it is not handed, it reads from the log."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from collector_server import ingest
from collector_server.processor import LocalProcessor
from collector_server.sinks.local import LocalLogSink
from collector_server.store.sqlite import SqliteStore
from pytest_testengine.model import batch_to_dict, records_of
from tests.collector.batches import batch
from tests.collector.test_store_rows import LIMITS

pytestmark = pytest.mark.anyio


async def test_entries_published_as_bodies_are_read_from_the_log(tmp_path: Path) -> None:
    sink = LocalLogSink(tmp_path / "log.db")
    store = SqliteStore(tmp_path / "store.db").open()
    await sink.start()
    processor = LocalProcessor(sink.log, store, batch_records=7)
    sink.subscribe(processor.on_commit, records=False)
    assert sink.takes_bodies
    sent = [batch(3) for _ in range(6)]
    try:
        for n, b in enumerate(sent):
            if n % 3:  # bodies, and records now and then (as another sink user may)
                raw = orjson.dumps(batch_to_dict(b), default=dict)
                checked = ingest.check_batch(orjson.loads(raw), raw, LIMITS)
                assert isinstance(checked, ingest.Checked)
                await sink.publish_body("t", checked.run, checked.body)
            else:
                await sink.publish(records_of("t", b))
        while processor.step():
            pass
    finally:
        await sink.close()
    assert processor.offset == 6
    stored = store.results("t", "default", limit=1000).items
    assert sorted(r["id"] for r in stored) == sorted(r.id for b in sent for r in b.results)
    store.close()
