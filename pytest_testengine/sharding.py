"""The client side of test splitting: which tests this shard runs.

``pytest --split-index I --split-total N`` (or the CI's parallel-job variables) makes this
session one of N shards.  After collection the shard sends every collected node id to the
collector (``POST /v1/plans``), which answers with one plan for the whole build, cached so
every shard gets the same one; the shard keeps its share, in collection order, and deselects
the rest.  When the collector gives no usable plan, ``--testengine-split-fallback`` decides:
``local`` (every shard computes the same :func:`~pytest_testengine.splitting.fallback_plan`
from the collected ids and the durations file), ``all`` (run everything) or ``fail``.

The decisions (:func:`split_spec`, :func:`plan_from_answer`, :func:`fallback_selection`, the
message texts) are pure; HTTP goes through :class:`~pytest_testengine.transport.Transport`
only, in :class:`PlanClient`.  The pytest plugin objects are in :mod:`pytest_testengine.sharder`
(registered only when splitting is on), dynamic mode in :mod:`pytest_testengine.leasing`,
pytest-xdist in :mod:`pytest_testengine.handoff`.

Exceptions::

    Exception
     └── PlanUnavailable      the collector gave no usable answer (the text says why)
    ValueError
     └── config.ConfigError   a usage error (the plugin raises it as pytest.UsageError)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast

import orjson
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

from pytest_testengine.config import ConfigError, Settings
from pytest_testengine.estimates import is_duration
from pytest_testengine.options import options_by_name
from pytest_testengine.splitting import SplitBy, fallback_plan, plan_fingerprint
from pytest_testengine.transport import CallAnswer, Reply, Retry

Mode = Literal["static", "dynamic"]
Fallback = Literal["local", "all", "fail"]

PREFIX: Final = "[testengine]"
PLANS_PATH: Final = "/v1/plans"
TROUBLESHOOTING: Final = "docs/troubleshooting.md"
#: A plan request waits at most this long per attempt, and makes this many attempts.
PLAN_TIMEOUT: Final = 5.0
PLAN_ATTEMPTS: Final = 3
#: Longest wait between attempts, even when the collector asks for more (Retry-After).
MAX_RETRY_WAIT: Final = 2.0


class PlanUnavailable(Exception):
    """The collector gave no usable plan or chunk; ``str()`` says what happened."""


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """What this shard asks for: the resolved and checked split settings."""

    index: int  # 0-based
    total: int
    by: SplitBy
    mode: Mode
    fallback: Fallback
    suite: str
    build_id: str
    durations: str | None = None  # path of a durations file for the local fallback
    fallback_source: str = "default"


_LABELS: Final = {"command line": "flag", "env": "env", "ini file": "ini"}


def setting_label(settings: Settings, name: str) -> str:
    """How the user gave ``name``: its flag, env or ini name, and the source in brackets."""
    source = settings.sources.get(name, "default")
    opt = options_by_name()[name]
    attr = _LABELS.get(source)
    label = getattr(opt, attr) if attr else None
    if source == "CI detection":
        label = f"{settings.ci.provider or 'CI'} parallel job variables"
        return f"{label} (CI detection)"
    return f"{label or opt.flag or name} ({source})"


def split_spec(settings: Settings, *, xdist: bool = False) -> SplitSpec | None:
    """The split this session runs, or None when it is not a shard.

    Splitting is on when ``--split-index``/``--split-total`` are given (command line, env, ini),
    or when ``--testengine`` is on and the CI runs parallel jobs.  Raises :class:`ConfigError`
    when only one of the two is given, the index is out of range, no build id is known, or
    dynamic mode is combined with pytest-xdist.
    """
    index, total = settings.split_index, settings.split_total
    sources = {settings.sources.get("split_index"), settings.sources.get("split_total")}
    if index is None and total is None:
        return None
    if sources <= {"CI detection", "default"} and (not settings.enabled or total == 1):
        return None  # the CI's parallel jobs split only with --testengine on, and N > 1
    if total is None:
        raise ConfigError(
            f"{PREFIX} {setting_label(settings, 'split_index')} is {index} but the shard count "
            "is missing: expected --split-total N (or TESTENGINE_SPLIT_TOTAL) with it; "
            f"see {TROUBLESHOOTING}#split-settings"
        )
    if index is None:
        raise ConfigError(
            f"{PREFIX} {setting_label(settings, 'split_total')} is {total} but the shard index "
            "is missing: expected --split-index I (or TESTENGINE_SPLIT_INDEX), 0-based, with it; "
            f"see {TROUBLESHOOTING}#split-settings"
        )
    if index >= total:
        raise ConfigError(
            f"{PREFIX} invalid value {index} for {setting_label(settings, 'split_index')}: "
            f"expected a shard index from 0 to {total - 1}, as "
            f"{setting_label(settings, 'split_total')} is {total} (the index is 0-based); "
            f"see {TROUBLESHOOTING}#split-settings"
        )
    if not settings.build_id:
        raise ConfigError(
            f"{PREFIX} splitting needs a build id shared by every shard of the build, and none "
            "was found: expected --testengine-build-id ID or TESTENGINE_BUILD_ID set to the same "
            "value on every shard (Buildkite, GitHub Actions, CircleCI, GitLab and Jenkins "
            f"give one); see {TROUBLESHOOTING}#no-build-id"
        )
    if settings.split_mode == "dynamic" and xdist:
        raise ConfigError(
            f"{PREFIX} {setting_label(settings, 'split_mode')} is dynamic, which does not work "
            "with pytest-xdist (-n): expected --split-mode static with -n, or no -n; "
            "see docs/splitting.md#dynamic-mode"
        )
    return SplitSpec(
        index=index,
        total=total,
        by=cast(SplitBy, settings.split_by),
        mode=cast(Mode, settings.split_mode),
        fallback=cast(Fallback, settings.split_fallback),
        suite=settings.suite,
        build_id=settings.build_id,
        durations=settings.durations,
        fallback_source=setting_label(settings, "split_fallback"),
    )


# -- the collector's answers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanAnswer:
    """The collector's plan, checked against the collected tests."""

    plan_id: str
    mode: Mode
    tests: tuple[str, ...]  # this shard's tests (static); () for a dynamic plan
    estimated: float | None  # this shard's estimate in seconds (static)
    estimated_total: float | None
    without_history: int
    cached: bool
    lease_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class LeasedChunk:
    id: object  # opaque: sent back as it came
    tests: tuple[str, ...]
    estimated: float | None


@dataclass(frozen=True, slots=True)
class Lease:
    """One answer of ``POST /v1/plans/{id}/next``."""

    chunk: LeasedChunk | None
    done: bool
    retry_after: float | None
    lease_seconds: float | None
    remaining: int | None


def _number(value: object) -> float | None:
    return float(cast(float, value)) if is_duration(value) else None


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlanUnavailable(f"the collector's answer has no valid {what}")
    return tuple(value)


def plan_from_answer(data: object, spec: SplitSpec, test_ids: Sequence[str]) -> PlanAnswer:
    """Check the collector's answer to ``POST /v1/plans``: a static plan must give every
    collected test to exactly one shard, and nothing else."""
    if not isinstance(data, dict) or not isinstance(data.get("plan_id"), str):
        raise PlanUnavailable("the collector's answer to POST /v1/plans has no plan_id")
    without = data.get("without_history")
    common = {
        "plan_id": data["plan_id"],
        "estimated_total": _number(data.get("estimated_total")),
        "without_history": without if isinstance(without, int) and without > 0 else 0,
        "cached": data.get("cached") is True,
    }
    if spec.mode == "dynamic":
        return PlanAnswer(
            mode="dynamic",
            tests=(),
            estimated=None,
            lease_seconds=_number(data.get("lease_seconds")),
            **common,
        )
    shards = data.get("shards")
    if not isinstance(shards, list) or len(shards) != spec.total:
        raise PlanUnavailable(f"the collector's plan does not have {spec.total} shards")
    indexes = sorted(shard.get("index", -1) if isinstance(shard, dict) else -1 for shard in shards)
    if indexes != list(range(spec.total)):
        raise PlanUnavailable(f"the collector's plan does not have shards 0 to {spec.total - 1}")
    mine: tuple[str, ...] = ()
    estimated = None
    seen: set[str] = set()
    count = 0
    for shard in shards:
        if not isinstance(shard, dict):
            raise PlanUnavailable("the collector's plan has a shard that is not an object")
        tests = _strings(shard.get("tests"), "shard tests")
        seen.update(tests)
        count += len(tests)
        if shard.get("index") == spec.index:
            mine, estimated = tests, _number(shard.get("estimated"))
    collected = set(test_ids)
    if seen != collected or count != len(seen):
        missing, unknown = len(collected - seen), len(seen - collected)
        raise PlanUnavailable(
            "the collector's plan does not match the collected tests "
            f"({missing} missing, {unknown} unknown, {count - len(seen)} twice)"
        )
    return PlanAnswer(mode="static", tests=mine, estimated=estimated, **common)


def lease_from_answer(data: object) -> Lease:
    """Check the collector's answer to ``POST /v1/plans/{id}/next``."""
    if not isinstance(data, dict) or not isinstance(data.get("done"), bool):
        raise PlanUnavailable("the collector's answer to POST .../next has no done flag")
    raw = data.get("chunk")
    chunk = None
    if isinstance(raw, dict) and "id" in raw:
        tests = _strings(raw.get("tests"), "chunk tests")
        chunk = LeasedChunk(id=raw["id"], tests=tests, estimated=_number(raw.get("estimated")))
    elif raw is not None:
        raise PlanUnavailable("the collector's answer to POST .../next has an invalid chunk")
    remaining = data.get("remaining")
    return Lease(
        chunk=chunk,
        done=data["done"],
        retry_after=_number(data.get("retry_after")),
        lease_seconds=_number(data.get("lease_seconds")),
        remaining=remaining if isinstance(remaining, int) else None,
    )


# -- HTTP ----------------------------------------------------------------------------------


class CallTransport(Protocol):
    url: str

    def call(self, path: str, payload: object, *, timeout: float | None = None) -> CallAnswer: ...


class PlanClient:
    """The plan endpoints, each call bounded: a short timeout, a few attempts (tenacity)."""

    def __init__(
        self,
        transport: CallTransport,
        *,
        timeout: float = PLAN_TIMEOUT,
        attempts: int = PLAN_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.attempts = attempts
        self.sleep = sleep
        self._jitter = wait_random_exponential(multiplier=0.2, max=1.0)

    def _wait(self, state: RetryCallState) -> float:
        answer = state.outcome.result() if state.outcome else None
        if isinstance(answer, Retry) and answer.retry_after is not None:
            return min(answer.retry_after, MAX_RETRY_WAIT)
        return float(self._jitter(state))

    def _post(self, path: str, payload: object) -> object:
        retrying = Retrying(
            retry=retry_if_result(lambda answer: isinstance(answer, Retry)),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            sleep=self.sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        try:
            answer: CallAnswer = retrying(self.transport.call, path, payload, timeout=self.timeout)
        except Exception as exc:  # never a traceback: whatever failed, the fallback decides
            text = f"the request to {path} failed ({type(exc).__name__}: {exc})"
            raise PlanUnavailable(text) from exc
        if isinstance(answer, Reply):
            return answer.data
        raise PlanUnavailable(answer.reason)

    def create(self, spec: SplitSpec, test_ids: Sequence[str]) -> PlanAnswer:
        payload = {
            "suite": spec.suite,
            "build_id": spec.build_id,
            "total": spec.total,
            "index": spec.index,
            "by": spec.by,
            "mode": spec.mode,
            "tests": list(test_ids),
        }
        return plan_from_answer(self._post(PLANS_PATH, payload), spec, test_ids)

    def next(
        self,
        plan_id: str,
        index: int,
        completed: Sequence[object],
        holding: Sequence[object],
        *,
        take: bool = True,
    ) -> Lease:
        """Report completed chunks, renew held leases and (with ``take``) lease one more."""
        payload = {"index": index, "completed": list(completed), "holding": list(holding)}
        if not take:
            payload["take"] = False
        return lease_from_answer(self._post(f"{PLANS_PATH}/{plan_id}/next", payload))


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """The tests this shard runs, and what to say about it."""

    keep: frozenset[str] | None  # None: every collected test
    plan_id: str | None
    estimated: float | None
    without_history: int = 0
    warning: str | None = None


def load_durations(path: str | Path) -> dict[str, float]:
    """A durations file: ``{node id: seconds}`` (also pytest-split's older list of pairs);
    raises OSError or ValueError with a readable text."""
    data: Any = orjson.loads(Path(path).read_bytes())
    if isinstance(data, list):
        data = {pair[0]: pair[1] for pair in data if isinstance(pair, list) and len(pair) == 2}
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object {node id: seconds}")
    return {str(k): float(v) for k, v in data.items() if is_duration(v)}


def durations_for_fallback(path: str | None) -> tuple[dict[str, float], str | None]:
    """The durations of the local fallback, and a note when the file could not be used."""
    if path is None:
        return {}, None
    try:
        return load_durations(path), None
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return {}, f"durations file {path} not used ({detail})"


def local_fallback(
    spec: SplitSpec, test_ids: Sequence[str], problem: str, base_dir: Path
) -> Selection:
    """The local fallback plan, with the durations file (relative to ``base_dir``) if given:
    what every shard, and every xdist worker of a shard, computes alone."""
    path = None if spec.durations is None else str(base_dir / spec.durations)
    durations, note = durations_for_fallback(path)
    return fallback_selection(spec, test_ids, problem, durations, note)


def plan_selection(answer: PlanAnswer) -> Selection:
    return Selection(
        keep=frozenset(answer.tests),
        plan_id=answer.plan_id,
        estimated=answer.estimated,
        without_history=answer.without_history,
    )


def local_plan_id(fingerprint: str) -> str:
    return f"local-{fingerprint[:16]}"


def fallback_selection(
    spec: SplitSpec,
    test_ids: Sequence[str],
    problem: str,
    durations: Mapping[str, float],
    note: str | None = None,
) -> Selection:
    """What the shard runs without the collector's plan; :class:`ConfigError` for ``fail``."""
    where = f"{TROUBLESHOOTING}#no-split-plan"
    if note:
        problem = f"{problem}; {note}"
    if spec.fallback == "fail":
        raise ConfigError(
            f"{PREFIX} no split plan from the collector: {problem}; no tests run because "
            f"{spec.fallback_source} is fail: to run anyway, pass "
            "--testengine-split-fallback local (every shard computes the same plan) or all "
            f"(every shard runs every test); see {where}"
        )
    if spec.fallback == "all":
        return Selection(
            keep=None,
            plan_id=None,
            estimated=None,
            warning=f"{PREFIX} no split plan from the collector: {problem}; this shard runs "
            f"every test ({spec.fallback_source} is all); see {where}",
        )
    plan, estimates = fallback_plan(test_ids, spec.total, by=spec.by, durations=durations)
    plan_id = local_plan_id(plan_fingerprint(plan))
    shard = plan.shards[spec.index]
    return Selection(
        keep=frozenset(shard.test_ids),
        plan_id=plan_id,
        estimated=shard.estimate,
        without_history=estimates.without_history,
        warning=f"{PREFIX} no split plan from the collector: {problem}; using the local "
        f"fallback plan {plan_id}, which every shard computes alike from the collected tests"
        f"{' and ' + spec.durations if spec.durations and not note else ''}; see {where}",
    )


# -- messages ------------------------------------------------------------------------------


def short_id(plan_id: str) -> str:
    """The start of a plan id, enough to find it: ``7f3c9a0e…``, ``local-3f9a2c1b…``."""
    keep = 14 if plan_id.startswith("local-") else 8
    return plan_id if len(plan_id) <= keep + 1 else plan_id[:keep] + "…"


def summary_line(
    spec: SplitSpec,
    selection: Selection,
    *,
    ran: int,
    collected: int,
    verb: str = "",
    detail: str = "",
) -> str:
    """``[testengine] shard 3/8: 412 of 3,290 tests, estimated 61.4 s (plan 7f3c…)``."""
    text = f"{PREFIX} shard {spec.index + 1}/{spec.total}: {verb}{ran:,} of {collected:,} tests"
    text += detail
    if selection.estimated is not None and math.isfinite(selection.estimated):
        text += f", estimated {selection.estimated:,.1f} s"
    if selection.without_history:
        text += f", {selection.without_history:,} without history"
    if selection.plan_id is None:
        return text + " (no plan: every test)"
    return f"{text} (plan {short_id(selection.plan_id)})"


def empty_shard_line(spec: SplitSpec, collected: int) -> str:
    return (
        f"{PREFIX} shard {spec.index + 1}/{spec.total} has no tests to run: the plan gives "
        f"all {collected:,} collected tests to other shards (exit status 0)"
    )
