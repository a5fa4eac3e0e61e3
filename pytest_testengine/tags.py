"""Tags: default dimension tags of a run, tags of a test, and their limits.

A test's tags come from, lowest first: ``@pytest.mark.testengine(team="api")`` or
``@pytest.mark.testengine(tags={"team": "api"})`` markers (the closest marker wins), the
``pytest_testengine_tags(item)`` hook, and the ``testengine_tags`` fixture at run time.  They
are gathered where the test runs and travel on the teardown report (attribute
:data:`REPORT_ATTR`), which pytest-xdist serialises to the controller.

Limits are enforced by :func:`limit_tags` without failing anything: tags over the count are left
out, keys and values over the length are left out, and a short note says so.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

#: Attribute of the teardown report that carries the test's tags (a plain dict).
REPORT_ATTR: Final = "testengine_tags"

MARKER: Final = "testengine"
MARKER_HELP: Final = (
    "testengine(**tags) or testengine(tags={...}): tags recorded with the test's results"
)


def marker_tags(markers: Iterable[Any]) -> dict[str, str]:
    """Tags of ``testengine`` markers given closest first (``item.iter_markers``)."""
    tags: dict[str, str] = {}
    for mark in reversed(list(markers)):
        kwargs = dict(mark.kwargs)
        nested = kwargs.pop("tags", None)
        if isinstance(nested, Mapping):
            tags.update({str(k): str(v) for k, v in nested.items()})
        elif nested is not None:
            kwargs["tags"] = nested
        tags.update({str(k): str(v) for k, v in kwargs.items()})
    return tags


class Limits(NamedTuple):  # not a dataclass: cheaper to define, in every pytest start
    max_tags: int = 50
    max_length: int = 128


def limit_tags(tags: Mapping[str, str], limits: Limits) -> tuple[dict[str, str], str | None]:
    """The tags within ``limits`` and, when some were left out, a note saying how many."""
    kept: dict[str, str] = {}
    too_long = 0
    for key, value in tags.items():
        if len(key) > limits.max_length or len(value) > limits.max_length or not key:
            too_long += 1
            continue
        kept[key] = value
    over = max(0, len(kept) - limits.max_tags)
    if over:
        kept = dict(list(kept.items())[: limits.max_tags])
    if not (too_long or over):
        return kept, None
    parts = []
    if over:
        parts.append(f"{over} over the limit of {limits.max_tags} tags (TESTENGINE_MAX_TAGS)")
    if too_long:
        parts.append(
            f"{too_long} longer than {limits.max_length} characters (TESTENGINE_MAX_TAG_LENGTH)"
        )
    return kept, " and ".join(parts)


def default_tags(
    *, ci_provider: str | None, pytest_version: str, plugin_version: str
) -> dict[str, str]:
    """Dimension tags of every run: host, Python, pytest, plugin and CI."""
    return {
        "host.os": sys.platform,
        "host.arch": platform.machine().lower() or "unknown",
        "python.version": "{}.{}.{}".format(*sys.version_info[:3]),
        "python.implementation": platform.python_implementation().lower(),
        "pytest.version": pytest_version,
        "testengine.version": plugin_version,
        "ci.provider": ci_provider or "none",
    }
