"""pytest reports -> result dicts of the wire format (``model.result_to_dict`` shape).

:class:`Assembler` joins the setup, call and teardown reports of one test execution into one
result, the moment the teardown report arrives, and maps a failed or skipped collection report
to a result of its own.  It reads only report attributes (which pytest-xdist serialises), so it
works the same on the xdist controller and in a plain run, and is tested with plain objects.
Results are plain dicts: they are built once per test and encoded in the sender thread.

Outcome rules, matching pytest's own counting:

- setup failed -> ``error`` (``when="setup"``); setup skipped -> ``skipped`` or ``xfailed``;
- call passed -> ``passed`` or ``xpassed``; failed -> ``failed``; skipped -> ``skipped`` or
  ``xfailed``;
- teardown failed after a passing test -> ``error`` (``when="teardown"``);
- a failed attempt that pytest-rerunfailures reruns (outcome ``rerun``) -> ``failed``/``error``,
  and the next execution of the same test gets ``attempt`` + 1;
- subtests (pytest's ``subtests`` fixture, unittest's ``subTest``, pytest-subtests): a
  subtest's report never decides the outcome (pytest counts a test whose subtest skipped or
  xfailed as passed); the failure of each failed subtest is added to the test's message after
  pytest's own ("contains 1 failed subtest"), and a test that passed although a subtest failed
  is ``failed``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Final

from pytest_testengine.tags import REPORT_ATTR, Limits, limit_tags

_SKIP_PREFIX: Final = "Skipped: "
_PHASES: Final = frozenset({"setup", "call", "teardown"})


def note_error(errors: list[str], exc: Exception) -> None:
    """Add an internal error of the plugin to ``errors`` (the first three kinds only): it ends
    up in the summary line instead of a traceback in the user's run."""
    text = f"internal error of the plugin ({type(exc).__name__}: {exc})"
    if text not in errors and len(errors) < 3:
        errors.append(text)


class IdSequence:
    """Result ids in the shape of ``model.new_id()`` (32 hex digits), made cheaply: 80 random
    bits per session followed by a counter, so ids never repeat across runs or within one."""

    def __init__(self) -> None:
        self._prefix = os.urandom(10).hex()  # what secrets.token_hex(10) returns
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():012x}"


def split_nodeid(nodeid: str) -> tuple[str, str, str, str | None]:
    """``"t/test_a.py::TestX::test_y[1-a]"`` -> (file, scope, name, params)."""
    params = None
    base = nodeid
    first = nodeid.find("::")  # the file part ends here; parameter ids may contain "::"
    if first >= 0 and nodeid.endswith("]"):
        cut = nodeid.find("[", first)
        if cut > 0:
            base, params = nodeid[:cut], nodeid[cut + 1 : -1]
    parts = base.split("::")
    name = parts[-1] if len(parts) > 1 else parts[0].rsplit("/", 1)[-1]
    return parts[0], "::".join(parts[1:-1]), name, params


def truncate(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters, keeping its start and its end (where the
    exception is) around a marker that says how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters truncated] ...\n"
    if limit <= len(marker) + 2:
        return text[:limit]
    keep = limit - len(marker)
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]


def _failure_text(report: Any) -> str:
    try:
        text = str(report.longreprtext)
    except Exception:  # a third-party longrepr that fails to render
        text = str(report.longrepr)
    return text.strip() or "failed"


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple | list) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = _failure_text(report)
    return reason.removeprefix(_SKIP_PREFIX)


def _xfail_reason(report: Any) -> str:
    reason = str(getattr(report, "wasxfail", "") or "")
    return reason.removeprefix("reason: ") or "xfail"


def _is_subtest(context: Any) -> bool:
    """Whether a report's ``context`` is a subtest's (pytest's SubtestContext or
    pytest-subtests' SubTestContext): its message and keyword arguments."""
    return hasattr(context, "msg") and hasattr(context, "kwargs")


def _subtest_name(context: Any) -> str:
    """``[msg] (k=v, ...)``, as pytest names a subtest in its summary."""
    parts = []
    if context.msg is not None:
        parts.append(f"[{context.msg}]")
    kwargs = context.kwargs
    if kwargs:
        parts.append("(" + ", ".join(f"{k}={v}" for k, v in dict(kwargs).items()) + ")")
    return "subtest " + (" ".join(parts) or "(<subtest>)")


def _phase_outcome(report: Any, when: str) -> tuple[str, str | None]:
    """(outcome, message) decided by one report, or ("passed", None)."""
    outcome = report.outcome
    xfail = hasattr(report, "wasxfail")
    if outcome == "passed":
        return ("xpassed", _xfail_reason(report)) if xfail else ("passed", None)
    if outcome == "skipped":
        return ("xfailed", _xfail_reason(report)) if xfail else ("skipped", _skip_reason(report))
    # "failed", or "rerun" from pytest-rerunfailures
    return ("error" if when != "call" else "failed"), _failure_text(report)


class Assembler:
    """Turns reports into result dicts; one instance per session (holds open executions)."""

    def __init__(
        self,
        *,
        message_limit: int = 4096,
        limits: Limits | None = None,
    ) -> None:
        self.message_limit = message_limit
        self.limits = limits or Limits()
        self.new_id = IdSequence()
        self._open: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._reruns: dict[str, int] = {}  # only tests that were rerun
        #: (location, key, result) of the execution the last report belonged to, if open.
        self._current: tuple[Any, tuple[str | None, str], dict[str, Any]] | None = None
        #: Notes about tags left out, at most a few (with the count of all of them).
        self.tag_notes: list[str] = []
        self.tag_note_count = 0
        #: Reports that could not be turned into results (at most a few).
        self.errors: list[str] = []

    def convert(self, reports: list[Any]) -> list[dict[str, Any]]:
        """The results finished by ``reports`` (test and collection reports, in the order
        pytest logged them).  Called with a batch of reports at a time: this loop runs two to
        three times faster than one report at a time between pytest's own work."""
        results = []
        for report in reports:
            try:
                if report.when == "collect":
                    result = self.collect_report(report)
                else:
                    result = self.test_report(report)
            except Exception as exc:  # one odd report must not cost the others
                note_error(self.errors, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def test_report(self, report: Any) -> dict[str, Any] | None:
        """Take one phase report; return the finished result on the teardown report."""
        attrs = vars(report)  # plain dict lookups: this runs three times per test
        # the next phase of the execution the last report belonged to: pytest gives the
        # reports of one item its location, one object (not so once xdist has sent them)
        location = attrs.get("location")
        worker: str | None = attrs.get("worker_id")
        current = self._current
        if current is not None and location is current[0] and worker == current[1][0]:
            key, result = current[1], current[2]
        else:
            nodeid: str = report.nodeid  # a property since pytest 9.2, worth skipping
            key = (worker, nodeid)
            opened = self._open.get(key)
            if opened is None:
                opened = self._open[key] = self._start(attrs, nodeid, worker)
            result = opened
            if location is not None:
                self._current = (location, key, result)
        when: str = attrs["when"]
        last = when == "teardown"
        if when not in _PHASES:  # e.g. xdist's report of a crashed worker
            when, last = "call", True
        result[when] = attrs["duration"]
        if attrs["outcome"] != "passed" or "wasxfail" in attrs:
            if "context" in attrs and when == "call" and _is_subtest(attrs["context"]):
                self._subtest(result, report, attrs["context"])
            else:
                self._apply(result, report, when)
        if not last:
            return None
        del self._open[key]
        self._current = None
        return self._finish(result, attrs)

    def unfinished(self) -> list[dict[str, Any]]:
        """Executions that never got their teardown report (an interrupted run), finished
        with what is known."""
        results = [self._finish(result, {}) for result in self._open.values()]
        self._open.clear()
        self._current = None
        return results

    def _finish(self, result: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        nodeid = result["nodeid"]
        result["duration"] = duration = result["setup"] + result["call"] + result["teardown"]
        result["stop"] = attrs.get("stop") or result["start"] + duration
        tags = attrs.get(REPORT_ATTR)
        if tags:
            result["tags"] = self._limit(nodeid, tags)
        if "_rerun" in result:
            del result["_rerun"]
            self._reruns[nodeid] = self._reruns.get(nodeid, 0) + 1
        if "_subtests" in result:
            self._add_subtests(result, result.pop("_subtests"))
        return result

    def collect_report(self, report: Any) -> dict[str, Any] | None:
        """A result for a failed or skipped collection (pytest counts those), else None."""
        if report.outcome == "passed":
            return None
        nodeid: str = report.nodeid or "."
        file, scope, name, params = split_nodeid(nodeid)
        if report.outcome == "skipped":
            outcome, message = "skipped", _skip_reason(report)
        else:
            outcome, message = "error", _failure_text(report)
        return {
            "id": self.new_id(),
            "nodeid": nodeid,
            "file": file,
            "name": name,
            "outcome": outcome,
            "line": None,
            "scope": scope,
            "params": params,
            "when": "collect",
            "setup": 0.0,
            "call": 0.0,
            "teardown": 0.0,
            "duration": 0.0,
            "start": getattr(report, "start", 0.0),
            "stop": getattr(report, "stop", 0.0),
            "message": truncate(message, self.message_limit),
            "worker": getattr(report, "worker_id", None),
            "attempt": 1,
            "tags": {},
        }

    def _start(self, attrs: dict[str, Any], nodeid: str, worker: str | None) -> dict[str, Any]:
        file, scope, name, params = split_nodeid(nodeid)
        location = attrs.get("location")
        line = location[1] if location else None
        return {
            "id": self.new_id(),
            "nodeid": nodeid,
            "file": location[0] if location else file,
            "name": name,
            "outcome": "passed",
            "line": line + 1 if isinstance(line, int) else None,
            "scope": scope,
            "params": params,
            "when": None,
            "setup": 0.0,
            "call": 0.0,
            "teardown": 0.0,
            "duration": 0.0,
            "start": attrs.get("start", 0.0),
            "stop": 0.0,
            "message": None,
            "worker": worker,
            "attempt": self._reruns.get(nodeid, 0) + 1 if self._reruns else 1,
            "tags": {},
        }

    def _apply(self, result: dict[str, Any], report: Any, when: str) -> None:
        outcome, message = _phase_outcome(report, when)
        if report.outcome == "rerun":
            result["_rerun"] = True
        if when == "teardown":
            if outcome != "error" or result["outcome"] in ("failed", "error"):
                return  # the call's verdict stands; pytest reports the teardown error too
        elif outcome == "passed":
            return
        result["outcome"] = outcome
        result["when"] = when
        if message is not None:
            result["message"] = truncate(message, self.message_limit)

    def _subtest(self, result: dict[str, Any], report: Any, context: Any) -> None:
        """Keep the failure of a failed subtest for the test's message (see the module's
        docstring); a skipped or xfailed subtest leaves the result as it is."""
        if report.outcome != "failed":
            return
        failure = f"{_subtest_name(context)}\n{_failure_text(report)}"
        result.setdefault("_subtests", []).append(truncate(failure, self.message_limit))

    def _add_subtests(self, result: dict[str, Any], failures: list[str]) -> None:
        # pytest reports a unittest case passed although its subTest failed: the run failed,
        # and the case's one result has to say so
        if result["outcome"] not in ("failed", "error"):
            result["outcome"], result["when"], result["message"] = "failed", "call", None
        count = len(failures)
        head = result["message"] or f"contains {count} failed subtest{'s' if count > 1 else ''}"
        result["message"] = truncate("\n\n".join([head, *failures]), self.message_limit)

    def _limit(self, nodeid: str, tags: Any) -> dict[str, str]:
        clean = {str(k): str(v) for k, v in dict(tags).items()}
        kept, note = limit_tags(clean, self.limits)
        if note is not None:
            self.tag_note_count += 1
            if len(self.tag_notes) < 3:
                self.tag_notes.append(f"{nodeid}: {note}")
        return kept
