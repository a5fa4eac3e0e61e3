"""The plugin object registered where results are sent from (the main process or the xdist
controller, never a worker; see ``plugin.pytest_configure``).

:class:`Recorder` hands reports to the :class:`~pytest_testengine.sender.Sender` (which turns
them into results and delivers them) and prints one summary line at the end.  Tags are put on
the reports by :mod:`pytest_testengine.tagging`.

Test reports, three per test, take the shortest way: once the sender has started (at the
first report at the latest), its ``submit`` itself is the ``pytest_runtest_logreport`` hook
(:class:`_Feeder`), one call per report; until then :class:`_Starter` takes the first one.

It lets no exception escape into pytest: a problem of the plugin becomes part of the
summary line, and pytest's exit status stays pytest's own.
"""

from __future__ import annotations

import platform
import shlex
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from pytest_testengine import __version__
from pytest_testengine.capture import Assembler, note_error
from pytest_testengine.config import Settings
from pytest_testengine.output import OutputFile
from pytest_testengine.sender import Policy, Sender, Summary
from pytest_testengine.spool import Spool
from pytest_testengine.tags import Limits, default_tags, limit_tags

PREFIX: Final = "[testengine]"
RECORDER: Final = "testengine-recorder"
STARTER: Final = "testengine-starter"
FEEDER: Final = "testengine-feeder"
DROPPED_HELP: Final = "docs/troubleshooting.md#results-were-dropped"


def run_info(settings: Settings, *, pytest_version: str) -> dict[str, Any]:
    """The run context of this session (the ``run`` object of the wire format)."""
    ci = settings.ci
    run_tags = default_tags(
        ci_provider=ci.provider, pytest_version=pytest_version, plugin_version=__version__
    )
    run_tags.update(settings.tags)
    kept, _ = limit_tags(run_tags, Limits(settings.max_tags, settings.max_tag_length))
    shard_index = ci.shard_index if settings.split_index is None else settings.split_index
    shard_total = ci.shard_total if settings.split_total is None else settings.split_total
    return {
        "run_id": uuid.uuid4().hex,  # the shape of model.new_id(), without loading the model
        "suite": settings.suite,
        "build_id": settings.build_id,
        "job_id": settings.job_id,
        "branch": settings.branch,
        "commit": settings.commit,
        "pull_request": settings.pull_request,
        "build_url": settings.build_url,
        "ci_provider": ci.provider,
        "shard_index": shard_index,
        "shard_total": shard_total,
        "plan_id": None,
        "python_version": "{}.{}.{}".format(*sys.version_info[:3]),
        "os": sys.platform,
        "arch": platform.machine().lower(),
        "pytest_version": pytest_version,
        "plugin_version": __version__,
        "tags": kept,
    }


def _plural(n: int) -> str:
    return f"{n} result" if n == 1 else f"{n:,} results"


def summary_line(summary: Summary, tag_notes: list[str], tag_note_count: int) -> str:
    """The one line printed at the end of the run."""
    parts: list[str] = []
    if summary.url is not None:
        parts.append(f"sent {_plural(summary.sent)} to {summary.url}")
    if summary.output is not None:
        parts.append(f"wrote {_plural(summary.written)} to {summary.output}")
    parts.extend(summary.problems)
    if summary.spooled:
        command = f"testengine upload --spool {shlex.quote(str(summary.spool_dir))}"
        if summary.url is not None:
            command += f" --url {shlex.quote(summary.url)}"
        parts.append(
            f"spooled {_plural(summary.spooled)} to {summary.spool_dir}; send them with: {command}"
        )
    if summary.dropped:
        parts.append(f"dropped {_plural(summary.dropped)} (see {DROPPED_HELP})")
    if tag_note_count:
        tests = "1 test" if tag_note_count == 1 else f"{tag_note_count} tests"
        parts.append(f"tags left out for {tests} ({'; '.join(tag_notes)})")
    return f"{PREFIX} " + "; ".join(parts)


class Recorder:
    """Records every result of the session and delivers it."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.assembler = Assembler(
            message_limit=settings.message_limit,
            limits=Limits(settings.max_tags, settings.max_tag_length),
        )
        self.sender: Sender | None = None
        self.run: dict[str, Any] = {}
        self.line: str | None = None
        self.errors: list[str] = []
        self._printed = False
        #: Splitting is on: the sender starts once the plan is known (its id goes into the
        #: run context), or at the first test report at the latest.
        self.wait_for_plan = False
        self.shard: dict[str, Any] = {}
        self._started = False
        self._early: list[pytest.CollectReport] = []  # collection reports before the start
        self._start_lock = threading.Lock()

    def register(self) -> None:
        """Register the recorder and the hook that takes the first test report."""
        manager = self.config.pluginmanager
        manager.register(self, RECORDER)
        manager.register(_Starter(self), STARTER)

    def first_report(self, report: pytest.TestReport) -> None:
        """Start (if the plan has not started it), and from now on let the sender's ``submit``
        take the reports as the hook itself.  Called on the main thread, like every hook."""
        self._start_once()
        manager = self.config.pluginmanager
        manager.unregister(name=STARTER)
        sender = self.sender
        if sender is not None:
            manager.register(_Feeder(sender.submit), FEEDER)
            sender.submit(report)  # the feeder takes the next report, not this one

    def set_shard(self, plan_id: str | None, index: int, total: int) -> None:
        """The split plan this session runs (called once the plan is known)."""
        self.shard = {"plan_id": plan_id, "shard_index": index, "shard_total": total}
        self._start_once()

    def _start_once(self) -> None:
        with self._start_lock:  # with xdist the plan arrives on the handoff thread
            if self._started:
                return
            try:
                self.start()
                for report in self._early:
                    if self.sender is not None:
                        self.sender.submit(report)
            except Exception as exc:
                self._failed(exc)
            self._early.clear()
            self._started = True

    def _path(self, value: str) -> Path:
        return self.config.invocation_params.dir / value

    def start(self) -> None:
        settings = self.settings
        self.run = run_info(settings, pytest_version=pytest.__version__)
        self.run.update(self.shard)
        spool_dir = (
            self._path(settings.spool_dir)
            if settings.spool_dir
            else self.config.rootpath / ".testengine" / "spool"
        )
        poster = None
        if settings.enabled:  # the HTTP client is loaded only to send: not for an output file
            from pytest_testengine.transport import Transport

            poster = Transport(
                settings.url,
                token=settings.token,
                timeout=settings.timeout,
                compress=settings.compress,
            )
        output = OutputFile(self._path(settings.output), self.run) if settings.output else None
        policy = Policy(
            batch_size=settings.batch_size,
            batch_age=settings.batch_age,
            queue_size=max(settings.queue_size, settings.batch_size),
            flush_deadline=settings.flush_deadline,
            retry_budget=max(settings.flush_deadline, 1.0),
        )
        self.sender = Sender(
            run=self.run,
            poster=poster,
            spool=Spool(spool_dir),
            output=output,
            policy=policy,
            converter=self.assembler,
        )
        self.sender.start()

    def _failed(self, exc: Exception) -> None:
        note_error(self.errors, exc)

    # -- hooks ------------------------------------------------------------------------------

    def pytest_sessionstart(self) -> None:
        if not self.wait_for_plan:
            self._start_once()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.outcome == "passed":
            return  # only failed or skipped collections are results
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._early.append(report)
                    return
        if self.sender is not None:
            self.sender.submit(report)

    def pytest_sessionfinish(self) -> None:
        self.finish()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        self.print_summary(terminalreporter.write_line)

    def pytest_unconfigure(self) -> None:
        self.finish()  # when the session ended before pytest_sessionfinish
        self.print_summary(lambda line: print(line, file=sys.stderr))

    # -- end of the run ---------------------------------------------------------------------

    def finish(self) -> None:
        """Flush and close the sender (at most the flush deadline) and compose the summary."""
        self._start_once()  # a session that ended before its plan still delivers its results
        manager = self.config.pluginmanager
        for name in (STARTER, FEEDER):  # reports after the end would go nowhere
            if manager.has_plugin(name):
                manager.unregister(name=name)
        sender, self.sender = self.sender, None
        if sender is None:
            if self.errors and self.line is None:
                self.line = f"{PREFIX} " + "; ".join(self.errors)
            return
        summary = Summary()
        try:
            summary = sender.close()  # converts what is left, unfinished executions included
        except Exception as exc:
            self._failed(exc)
        summary.problems[:0] = self.errors + self.assembler.errors
        self.line = summary_line(summary, self.assembler.tag_notes, self.assembler.tag_note_count)

    def print_summary(self, write_line: Any) -> None:
        if self.line is not None and not self._printed:
            self._printed = True
            write_line(self.line)


class _Starter:
    """Takes the first test report for the recorder (see :meth:`Recorder.first_report`)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.recorder.first_report(report)


class _Feeder:
    """The sender's ``submit`` as the ``pytest_runtest_logreport`` hook: the hot path, three
    times per test, in one call (the sender turns reports into results a batch at a time;
    see Sender.submit and Assembler.convert)."""

    def __init__(self, submit: Callable[[pytest.TestReport], None]) -> None:
        self.pytest_runtest_logreport = submit
