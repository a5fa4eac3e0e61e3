"""Duration estimates for collected tests, and the parts of a pytest node id (pure).

A split is only as good as its estimates: with exact durations, longest-first packing already
reaches the lower bound, so what matters is how tests without history are estimated.  Every
collected test gets ``base + overhead`` seconds, where *base* comes from the first source that
knows something, best first:

``history``
    the test's own duration (the caller passes the median of its recent passing runs,
    setup + call + teardown);
``siblings``
    the median of the same function's other parametrizations
    (``test_x[1]`` and ``test_x[2]`` for a new ``test_x[3]``);
``file``
    the median of the known tests of the same file;
``suite``
    the median of the collected tests with history (or of every known test when none of the
    collected ones has history);
``default``
    :data:`DEFAULT_DURATION` when nothing at all is known.

*overhead* is pytest's own cost per test (collection, reporting, hooks), which recorded phase
durations miss: about a millisecond per test, a sizeable share of a suite of tiny tests.

Durations that are negative, NaN, infinite or absurd (over :data:`MAX_DURATION`) are ignored:
they count as no history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

#: pytest's own cost per test in seconds, added to every estimate.
DEFAULT_OVERHEAD: Final = 0.001

#: The estimate in seconds for a test of a suite without any history.
DEFAULT_DURATION: Final = 1.0

#: Longer "durations" (about 32 years) are corrupt data; ignoring them keeps sums finite.
MAX_DURATION: Final = 1e9

EstimateSource = Literal["history", "siblings", "file", "suite", "default"]
ESTIMATE_SOURCES: Final[tuple[EstimateSource, ...]] = get_args(EstimateSource)


@dataclass(frozen=True, slots=True)
class NodeId:
    """The parts of a pytest node id ``file::Scope::Nested::name[params]``.

    The file is everything before the first ``::``; the parameters start at the first ``[``
    after it (Python names cannot contain one), so ``::`` and brackets inside parameters are
    kept whole.  A node id without ``::`` is a file-level item: its name is empty.
    """

    nodeid: str
    file: str
    scope: str  # enclosing classes joined by "::", "" at module level
    name: str  # function name without parameters
    params: str | None  # parametrize id without the brackets, None when not parametrized

    @property
    def function(self) -> str:
        """The node id without parameters: the same for every parametrization."""
        if self.params is None:
            return self.nodeid
        return self.nodeid[: len(self.nodeid) - len(self.params) - 2]


def parse_nodeid(nodeid: str) -> NodeId:
    """Split a node id into file, enclosing classes, function name and parameters."""
    file, sep, rest = nodeid.partition("::")
    if not sep:
        return NodeId(nodeid=nodeid, file=file, scope="", name="", params=None)
    params: str | None = None
    bracket = rest.find("[")
    if bracket >= 0 and rest.endswith("]"):
        params = rest[bracket + 1 : -1]
        rest = rest[:bracket]
    scope, _, name = rest.rpartition("::")
    return NodeId(nodeid=nodeid, file=file, scope=scope, name=name, params=params)


def file_of(nodeid: str) -> str:
    """The file part of a node id (fast path of :func:`parse_nodeid`)."""
    return nodeid.partition("::")[0]


def function_of(nodeid: str) -> str:
    """The node id without its parameters (fast path of :attr:`NodeId.function`)."""
    bracket = nodeid.find("[")
    if bracket < 0 or not nodeid.endswith("]"):
        return nodeid
    sep = nodeid.find("::")
    if sep < 0:
        return nodeid
    if sep > bracket:  # a bracket in the file path
        bracket = nodeid.find("[", sep + 2)
    return nodeid[:bracket] if bracket >= 0 else nodeid


@dataclass(frozen=True, slots=True)
class Estimates:
    """An estimate in seconds for every collected test, and where each one came from."""

    seconds: Mapping[str, float]
    sources: Mapping[str, EstimateSource]

    @property
    def without_history(self) -> int:
        """How many tests had no recorded duration of their own."""
        return sum(1 for source in self.sources.values() if source != "history")

    def counts(self) -> dict[EstimateSource, int]:
        """The number of tests per source, every source present (zero when unused)."""
        counts = dict.fromkeys(ESTIMATE_SOURCES, 0)
        for source in self.sources.values():
            counts[source] += 1
        return counts


def is_duration(value: object) -> bool:
    """True for a usable duration: a number from 0 to MAX_DURATION (not a bool, not NaN)."""
    if value.__class__ is float:
        return 0.0 <= value <= MAX_DURATION
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_DURATION
    )


def median(values: list[float]) -> float:
    """The median of a non-empty list (sorts it in place)."""
    values.sort()
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2


def estimate(
    test_ids: Iterable[str],
    durations: Mapping[str, float],
    *,
    overhead: float = DEFAULT_OVERHEAD,
    default: float = DEFAULT_DURATION,
) -> Estimates:
    """Estimate every test in *test_ids* from the known *durations* (seconds per node id).

    *durations* may hold tests that are not collected now (other directories, deleted
    tests): they still inform the sibling and file medians.  The result does not depend on
    the order of *test_ids*; duplicates count once.
    """
    if not is_duration(overhead):
        raise ValueError(f"[testengine] invalid overhead {overhead!r}: expected seconds >= 0")
    if not is_duration(default):
        raise ValueError(f"[testengine] invalid default {default!r}: expected seconds >= 0")
    get = durations.get
    seconds: dict[str, float] = {}
    missing: list[str] = []
    known: list[float] = []
    for test_id in dict.fromkeys(test_ids):
        value = get(test_id)
        if value.__class__ is float and 0.0 <= value <= MAX_DURATION:
            seconds[test_id] = value + overhead
            known.append(value)
        elif value is not None and is_duration(value):
            seconds[test_id] = float(value) + overhead
            known.append(float(value))
        else:
            missing.append(test_id)
            seconds[test_id] = 0.0  # keeps collection order; filled below
    sources: dict[str, EstimateSource] = dict.fromkeys(seconds, "history")
    if not missing:
        return Estimates(seconds=seconds, sources=sources)

    pool = _Pool(durations, known, {file_of(test_id) for test_id in missing})
    for test_id in missing:
        base = pool.siblings(function_of(test_id))
        source: EstimateSource = "siblings"
        if base is None:
            base, source = pool.file(file_of(test_id)), "file"
        if base is None:
            base, source = pool.suite(), "suite"
        if base is None:
            base, source = default, "default"
        seconds[test_id] = base + overhead
        sources[test_id] = source
    return Estimates(seconds=seconds, sources=sources)


class _Pool:
    """The known durations grouped by function, file and suite; medians computed on demand."""

    def __init__(self, durations: Mapping[str, float], known: list[float], files: set[str]) -> None:
        self._durations = durations
        self._known = known  # durations of the collected tests with history
        self._functions = _by_function(durations, files)
        self._files: dict[str, list[str]] | None = None
        self._function_medians: dict[str, float | None] = {}
        self._file_medians: dict[str, float | None] = {}
        self._suite: list[float | None] = []

    def siblings(self, function: str) -> float | None:
        if function not in self._function_medians:
            values = _valid(self._functions.get(function, []))
            self._function_medians[function] = median(values) if values else None
        return self._function_medians[function]

    def file(self, file: str) -> float | None:
        if file not in self._file_medians:
            if self._files is None:
                self._files = {}
                for function in self._functions:
                    self._files.setdefault(file_of(function), []).append(function)
            values = [
                value
                for function in self._files.get(file, [])
                for value in _valid(self._functions[function])
            ]
            self._file_medians[file] = median(values) if values else None
        return self._file_medians[file]

    def suite(self) -> float | None:
        if not self._suite:
            values = self._known or _valid(list(self._durations.values()))
            self._suite.append(median(values) if values else None)
        return self._suite[0]


def _valid(values: list[float]) -> list[float]:
    """The usable durations among *values* (declared floats, but checked), as floats."""
    return [
        value if value.__class__ is float else float(value)
        for value in values
        if (value.__class__ is float and 0.0 <= value <= MAX_DURATION) or is_duration(value)
    ]


def _by_function(durations: Mapping[str, float], files: set[str]) -> dict[str, list[float]]:
    """The known values of the tests in *files*, grouped by the node id without parameters."""
    groups: dict[str, list[float]] = {}
    for test_id, value in durations.items():
        # this loop runs over the whole history: file_of and function_of inlined
        if test_id.partition("::")[0] not in files:
            continue
        bracket = test_id.find("[")
        if bracket < 0:
            function = test_id
        elif test_id.endswith("]") and test_id.find("::", 0, bracket) >= 0:
            function = test_id[:bracket]
        else:
            function = function_of(test_id)
        group = groups.get(function)
        if group is None:
            groups[function] = [value]
        else:
            group.append(value)
    return groups
