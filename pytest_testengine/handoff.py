"""Splitting with pytest-xdist (``-n``): the controller plans, the workers deselect.

xdist workers collect; the controller does not.  So the controller gives every worker a
directory (``workerinput``); each worker writes its collected node ids there and waits for
the controller's selection; a small controller thread reads the first worker's ids, makes the
one plan request of this shard (or its fallback) through the
:class:`~pytest_testengine.sharder.Sharder`, and writes the selection that every worker
applies.  Workers never talk to the collector, and the results (sent by the controller) carry
the plan id.  Dynamic mode with xdist is refused as a usage error.  The workers must share the
controller's file system (``-n N`` on one machine).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from pytest_testengine.config import ConfigError
from pytest_testengine.sharder import Sharder, deselect
from pytest_testengine.sharding import (
    PlanAnswer,
    Selection,
    SplitSpec,
    local_fallback,
)

SPLIT_DIR_KEY: Final = "testengine_split_dir"
SELECTION_FILE: Final = "selection.json"
#: How long the controller waits for a worker's collection, and a worker for the selection.
COLLECTION_WAIT: Final = 1800.0
SELECTION_WAIT: Final = 120.0
POLL: Final = 0.02


def write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class Handoff:
    """The controller's side (registered next to the :class:`Sharder`)."""

    def __init__(self, sharder: Sharder) -> None:
        self.sharder = sharder
        self.directory = Path(tempfile.mkdtemp(prefix="testengine-split-"))
        self.lines: list[str] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._plan, name="testengine-split", daemon=True)
        self._printed = False

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[SPLIT_DIR_KEY] = str(self.directory)

    def pytest_sessionstart(self) -> None:
        self._thread.start()

    def _plan(self) -> None:
        deadline = time.monotonic() + COLLECTION_WAIT
        found: list[Path] = []
        while not self._stop.wait(POLL) and time.monotonic() < deadline:
            found = sorted(self.directory.glob("ids-*.json"))
            if found:
                break
        if not found:
            return
        ids: list[str] = orjson.loads(found[0].read_bytes())
        keep: list[str] | None = []
        try:
            planned = self.sharder.plan(ids)
            assert not isinstance(planned, PlanAnswer)  # dynamic mode is refused with xdist
            keep = None if planned.keep is None else sorted(planned.keep)
            self._report(planned, ids, keep)
        except ConfigError as exc:
            self.error = str(exc)
            self.lines.append(self.error)
        except Exception as exc:  # never leave the workers waiting: the shared local plan
            keep = self._local(ids, f"planning failed ({type(exc).__name__}: {exc})")
        finally:
            write_atomic(self.directory / SELECTION_FILE, orjson.dumps({"keep": keep}))

    def _local(self, ids: list[str], problem: str) -> list[str] | None:
        try:
            selection = local_fallback(
                self.sharder.spec, ids, problem, self.sharder.config.invocation_params.dir
            )
        except ConfigError as exc:
            self.error = str(exc)
            self.lines.append(self.error)
            return []
        self._report(selection, ids, None if selection.keep is None else sorted(selection.keep))
        return None if selection.keep is None else sorted(selection.keep)

    def _report(self, selection: Selection, ids: list[str], keep: list[str] | None) -> None:
        if selection.warning:
            self.lines.append(selection.warning)
        self.lines.append(self.sharder.settle(selection, len(ids) if keep is None else len(keep)))

    def _print(self) -> None:
        if not self._printed and self.lines:
            self._printed = True
            for line in self.lines:
                self.sharder.write(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self._print()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stop.set()
        self._thread.join(timeout=60.0)
        self._print()
        if self.error is not None:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class WorkerSelection:
    """An xdist worker's side: hand the collected ids over, apply the controller's selection."""

    def __init__(self, spec: SplitSpec, directory: str, worker: str) -> None:
        self.spec = spec
        self.directory = Path(directory)
        self.worker = worker

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        ids = list(dict.fromkeys(item.nodeid for item in items))
        write_atomic(self.directory / f"ids-{self.worker}.json", orjson.dumps(ids))
        deselect(config, items, self._wait(ids, config.invocation_params.dir))

    def _wait(self, ids: list[str], base_dir: Path) -> list[str] | None:
        path = self.directory / SELECTION_FILE
        deadline = time.monotonic() + SELECTION_WAIT
        while time.monotonic() < deadline:
            if path.exists():
                keep: list[str] | None = orjson.loads(path.read_bytes())["keep"]
                return keep
            time.sleep(POLL)  # polling a condition with a deadline
        try:  # the same plan every worker (and every shard) computes alone
            selection = local_fallback(
                self.spec, ids, "no selection from the xdist controller", base_dir
            )
        except ConfigError:
            return []
        return None if selection.keep is None else sorted(selection.keep)
