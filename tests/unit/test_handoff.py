"""An xdist worker's side of splitting: the controller's selection, or its own fallback."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from pytest_testengine import handoff
from pytest_testengine.handoff import SELECTION_FILE, WorkerSelection, write_atomic
from pytest_testengine.sharding import Fallback, SplitSpec, local_fallback

IDS = [f"tests/test_{i % 7}.py::test_{i}" for i in range(60)]


def spec(fallback: Fallback = "local", durations: str | None = None) -> SplitSpec:
    return SplitSpec(
        index=1,
        total=3,
        by="test",
        mode="static",
        fallback=fallback,
        suite="default",
        build_id="b1",
        durations=durations,
    )


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "SELECTION_WAIT", 0.3)


def test_the_controllers_selection_is_applied(tmp_path: Path) -> None:
    worker = WorkerSelection(spec(), str(tmp_path), "gw0")
    timer = threading.Timer(
        0.05, write_atomic, (tmp_path / SELECTION_FILE, orjson.dumps({"keep": IDS[:5]}))
    )
    timer.start()
    try:
        assert worker._wait(IDS, tmp_path) == IDS[:5]
    finally:
        timer.cancel()


def test_without_a_selection_the_worker_computes_the_shards_local_plan(tmp_path: Path) -> None:
    durations = tmp_path / "durations.json"
    durations.write_bytes(orjson.dumps({test: float(i) for i, test in enumerate(IDS)}))
    the_spec = spec(durations="durations.json")
    worker = WorkerSelection(the_spec, str(tmp_path / "split"), "gw1")
    (tmp_path / "split").mkdir()
    kept = worker._wait(IDS, tmp_path)
    expected = local_fallback(the_spec, IDS, "no selection", tmp_path)
    assert expected.keep is not None
    assert kept == sorted(expected.keep)
    assert 0 < len(kept) < len(IDS)
    # the durations file counts: without it the same shard gets other tests
    without = local_fallback(spec(), IDS, "no selection", tmp_path)
    assert without.keep != expected.keep


@pytest.mark.parametrize(("fallback", "expected"), [("all", None), ("fail", [])])
def test_the_other_fallbacks(
    tmp_path: Path, fallback: Fallback, expected: list[str] | None
) -> None:
    worker = WorkerSelection(spec(fallback), str(tmp_path), "gw0")
    assert worker._wait(IDS, tmp_path) == expected
