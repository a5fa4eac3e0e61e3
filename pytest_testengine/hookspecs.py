"""Hooks that other plugins (and conftest files) may implement."""

from __future__ import annotations

from collections.abc import Mapping

import pytest


@pytest.hookspec
def pytest_testengine_tags(item: pytest.Item) -> Mapping[str, object] | None:
    """Return tags for the result of ``item`` (``{"team": "api"}``), or ``None``.

    Called once per test execution, in the process that runs the test (an xdist worker or the
    main process), after the test finished.  Values are converted with ``str()``; the tags of
    every implementation are merged, and tags added with the ``testengine_tags`` fixture win.
    Count and length limits apply (``TESTENGINE_MAX_TAGS``, ``TESTENGINE_MAX_TAG_LENGTH``).
    """
