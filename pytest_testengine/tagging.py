"""Tags of each test, put on its teardown report where the test runs.

Registered wherever tests run: the main process, or each xdist worker (whose reports
pytest-xdist serialises to the controller, tags included).  Light on purpose: an xdist worker
imports this module and not the sender's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import pytest

from pytest_testengine.tags import MARKER, REPORT_ATTR, marker_tags


def _own_marker(node: pytest.Item | pytest.Collector) -> bool:
    """Whether ``node`` itself carries the ``testengine`` marker."""
    return any(mark.name == MARKER for mark in node.own_markers)


def marked_tags(items: Iterable[pytest.Item]) -> dict[str, dict[str, str]]:
    """The ``testengine`` marker tags of each item that has any, by node id.

    Each collector's own markers are looked at once (modules and classes are shared by many
    items), so a suite without the marker costs one short scan per item."""
    collectors: dict[int, bool] = {}  # id of a collector -> it or a parent has the marker

    def collector_marked(node: pytest.Collector | None) -> bool:
        if node is None:
            return False
        found = collectors.get(id(node))
        if found is None:
            found = collectors[id(node)] = _own_marker(node) or collector_marked(node.parent)
        return found

    tags = {}
    for item in items:
        parent = item.parent
        found = collectors.get(id(parent))  # known after the first item of each parent
        if found is None:
            found = collector_marked(parent)
        if found or _own_marker(item):
            marks = marker_tags(item.iter_markers(MARKER))
            if marks:
                tags[item.nodeid] = marks
    return tags


REPORT_TAGGER: Final = "testengine-report-tagger"


class Tagger:
    """The tags of each test, put on its teardown report where the test runs (the main
    process or an xdist worker: pytest-xdist serialises the attribute to the controller).

    Marker tags are read once, when collection ends; the ``testengine_tags`` fixture writes
    into :attr:`runtime` while the test runs; the ``pytest_testengine_tags`` hook, when some
    plugin implements it, is asked as the test's teardown starts (:class:`HookTagger`).  The
    reports are tagged by :class:`ReportTagger`, registered only once some test has tags: a
    run without tags has no per-report hook of its own here.
    """

    def __init__(self, pluginmanager: pytest.PytestPluginManager) -> None:
        self.marked: dict[str, dict[str, str]] = {}
        #: Tags of the fixture and the hook, by node id, until the test's teardown report.
        self.runtime: dict[str, dict[str, str]] = {}
        self._pluginmanager = pluginmanager

    @pytest.hookimpl(trylast=True)  # after collection_finish hooks that add markers
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.marked = marked_tags(session.items)
        hooked = bool(session.config.hook.pytest_testengine_tags.get_hookimpls())
        if hooked:
            self._pluginmanager.register(HookTagger(self), "testengine-hook-tagger")
        if hooked or self.marked:
            self.tag_reports()

    def runtime_tags(self, nodeid: str) -> dict[str, str]:
        """The run-time tags of a test, to add to (the ``testengine_tags`` fixture)."""
        self.tag_reports()
        return self.runtime.setdefault(nodeid, {})

    def tag_reports(self) -> None:
        """Tag teardown reports from now on (the first time some test may have tags)."""
        if not self._pluginmanager.has_plugin(REPORT_TAGGER):
            self._pluginmanager.register(ReportTagger(self), REPORT_TAGGER)

    def attach(self, report: pytest.TestReport) -> None:
        """Put the test's tags on its teardown report (markers, then hook, then fixture)."""
        if not (self.marked or self.runtime):
            return
        nodeid = report.nodeid
        tags = self.marked.get(nodeid)
        runtime = self.runtime.pop(nodeid, None)
        if runtime:
            tags = {**tags, **runtime} if tags else runtime
        if tags:
            setattr(report, REPORT_ATTR, tags)


class HookTagger:
    """Asks the ``pytest_testengine_tags`` hook for each test's tags as its teardown starts
    (registered only when some plugin implements the hook)."""

    def __init__(self, tagger: Tagger) -> None:
        self.tagger = tagger

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        tags: dict[str, str] = {}
        try:
            for found in item.ihook.pytest_testengine_tags(item=item):
                if isinstance(found, Mapping):
                    tags.update({str(k): str(v) for k, v in found.items()})
        except Exception as exc:  # a broken hook implementation must not break the run
            tags = {"testengine.error": f"tags: {type(exc).__name__}: {exc}"[:128]}
        runtime = self.tagger.runtime
        fixture_tags = runtime.get(item.nodeid)
        if fixture_tags:
            tags.update(fixture_tags)  # the fixture's tags win
        if tags:
            runtime[item.nodeid] = tags


class ReportTagger:
    """Puts the tags on each teardown report before it is recorded or, on an xdist worker,
    sent to the controller (first: the sender may convert the report in its own hook)."""

    def __init__(self, tagger: Tagger) -> None:
        self.tagger = tagger

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.tagger.attach(report)
