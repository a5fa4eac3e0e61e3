"""The pytest side of splitting: the :class:`Sharder` plugin object and its registration.

:func:`install` registers it only when the session is a shard (``plugin.pytest_configure``
calls it), as pytest-split does: without splitting, none of these hooks exist.  The decisions
it applies are in :mod:`pytest_testengine.sharding`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import pytest

from pytest_testengine.config import ConfigError, Settings
from pytest_testengine.sharding import (
    PLAN_TIMEOUT,
    PlanAnswer,
    PlanClient,
    PlanUnavailable,
    Selection,
    SplitSpec,
    empty_shard_line,
    local_fallback,
    plan_selection,
    summary_line,
)

if TYPE_CHECKING:
    from pytest_testengine.leasing import DynamicRun


def install(
    config: pytest.Config,
    settings: Settings,
    split: SplitSpec,
    on_plan: Callable[[str | None, int, int], None] | None,
) -> None:
    """Register what this process needs to be a shard: the :class:`Sharder` (with a
    :class:`~pytest_testengine.handoff.Handoff` on an xdist controller), or on an xdist worker
    the selection its controller hands over."""
    from pytest_testengine import handoff
    from pytest_testengine.transport import Transport

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker deselects what its controller planned
        if handoff.SPLIT_DIR_KEY in workerinput:
            worker = handoff.WorkerSelection(
                split, workerinput[handoff.SPLIT_DIR_KEY], workerinput["workerid"]
            )
            config.pluginmanager.register(worker, "testengine-worker-selection")
        return
    transport = Transport(
        settings.url, token=settings.token, timeout=settings.timeout, compress=settings.compress
    )
    client = PlanClient(transport, timeout=min(settings.timeout, PLAN_TIMEOUT))
    sharder = Sharder(config, split, client, on_plan=on_plan)
    config.pluginmanager.register(sharder, "testengine-sharder")
    config.add_cleanup(transport.close)
    if getattr(config.option, "dist", "no") != "no":  # xdist: the workers collect
        config.pluginmanager.register(handoff.Handoff(sharder), "testengine-handoff")


def deselect(config: pytest.Config, items: list[pytest.Item], keep: Collection[str] | None) -> None:
    """Keep the items whose node id is in ``keep`` (all when None), in collection order."""
    if keep is None:
        return
    kept = [item for item in items if item.nodeid in keep]
    dropped = [item for item in items if item.nodeid not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


class Sharder:
    """Makes this session one shard: registered by the plugin only when splitting is on.

    After collection (last of the ``pytest_collection_modifyitems`` implementations) it asks
    for the plan and deselects the other shards' tests; in dynamic mode it runs the leased
    chunks instead of pytest's run loop.  ``on_plan(plan_id, index, total)`` tells the
    recorder which plan the results belong to.
    """

    def __init__(
        self,
        config: pytest.Config,
        spec: SplitSpec,
        client: PlanClient,
        *,
        on_plan: Callable[[str | None, int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.spec = spec
        self.client = client
        self.on_plan = on_plan
        self.collected = 0
        self.emptied = False
        self.dynamic: DynamicRun | None = None
        self._ids: list[str] = []

    def write(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)
        else:
            print(line, file=sys.stderr)

    def _fallback(self, problem: str) -> Selection:
        return local_fallback(self.spec, self._ids, problem, self.config.invocation_params.dir)

    def told(self, plan_id: str | None) -> None:
        if self.on_plan is not None:
            self.on_plan(plan_id, self.spec.index, self.spec.total)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if session.testsfailed and not config.option.continue_on_collection_errors:
            return  # pytest stops after collection errors: no plan for a broken collection
        if self.spec.mode == "dynamic" and config.option.collectonly:
            return  # nothing runs: no queue to make
        ids = list(dict.fromkeys(item.nodeid for item in items))
        if not ids:
            return  # nothing to split
        try:
            planned = self.plan(ids)
        except ConfigError as err:
            raise pytest.UsageError(str(err)) from None
        if isinstance(planned, PlanAnswer):
            self._start_dynamic(planned)
            return
        if planned.warning:
            self.write(planned.warning)
        self._select(planned, config, items)

    def plan(self, ids: list[str]) -> Selection | PlanAnswer:
        """This shard's selection (a dynamic plan as the collector's answer); raises
        ConfigError when there is no plan and the fallback is ``fail``."""
        self._ids = ids
        self.collected = len(ids)
        try:
            answer = self.client.create(self.spec, ids)
        except PlanUnavailable as exc:
            return self._fallback(str(exc))
        return answer if answer.mode == "dynamic" else plan_selection(answer)

    def _start_dynamic(self, answer: PlanAnswer) -> None:
        from pytest_testengine.leasing import DynamicRun

        self.dynamic = DynamicRun(
            self.spec,
            self.client,
            answer.plan_id,
            lease_seconds=answer.lease_seconds,
            fallback=self._fallback,
            write=self.write,
        )
        self.told(answer.plan_id)

    def _select(
        self, selection: Selection, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        deselect(config, items, selection.keep)
        self.write(self.settle(selection, len(dict.fromkeys(item.nodeid for item in items))))

    def settle(self, selection: Selection, ran: int) -> str:
        """Record that this shard runs ``ran`` tests of ``selection``; its summary line."""
        self.emptied = self.collected > 0 and ran == 0
        self.told(selection.plan_id)
        return summary_line(self.spec, selection, ran=ran, collected=self.collected)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if self.dynamic is None:  # not dynamic, collect-only, or collection errors
            return None  # pytest's own loop
        self.dynamic.run(session, session.items)
        return True

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.dynamic
        if run is None:
            return
        done = Selection(
            keep=None, plan_id=run.plan_id, estimated=run.estimated if run.chunks else None
        )
        chunks = f" in {run.chunks:,} chunk{'s' if run.chunks != 1 else ''}"
        line = summary_line(
            self.spec, done, ran=len(run.ran), collected=self.collected, verb="ran ", detail=chunks
        )
        terminalreporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.emptied and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK
            self.write(empty_shard_line(self.spec, self.collected))
