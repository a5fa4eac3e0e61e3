"""Helpers of the plugin tests: a clean environment and reading what the collector stored."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpcore  # noqa: F401  (see below)
import httpx
import orjson
import pytest

from tests.support.collector import CollectorProcess

POLL = 0.02

# httpx imports httpcore lazily, on its first request.  If that first request happens inside a
# test using ``pytester``, pytester's sys.modules snapshot drops httpcore afterwards, and the
# next test gets a second httpcore whose exceptions httpx no longer recognises.  Importing it
# here, at collection time, keeps one httpcore for the whole session.


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TESTENGINE_* or CI variables from the shell leak into the pytest under test."""
    for name in list(os.environ):
        if name.startswith(("TESTENGINE_", "BUILDKITE", "GITHUB_", "CIRCLE", "GITLAB_")):
            monkeypatch.delenv(name)
    for name in ("CI", "JENKINS_URL", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        monkeypatch.delenv(name, raising=False)


def stored(
    collector: CollectorProcess,
    n: int,
    suite: str = "default",
    *,
    token: str | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Every result of ``suite`` once at least ``n`` are stored and the processor caught up
    with everything the collector accepted (so a duplicate would show)."""
    collector.wait_for_results(n, suite=suite, token=token, timeout=timeout)
    deadline = time.monotonic() + timeout
    lag = None
    with httpx.Client(timeout=10.0) as client:
        while time.monotonic() < deadline:
            lag = client.get(collector.url + "/readyz").json().get("processor", {}).get("lag", 0)
            if lag == 0:
                break
            time.sleep(POLL)  # polling a condition with a deadline
    assert lag == 0, f"the processor is {lag} log entries behind after {timeout} s"
    return collector.results(suite, token=token)


def by_nodeid(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for result in results:
        assert result["nodeid"] not in found, f"{result['nodeid']} stored twice"
        found[result["nodeid"]] = result
    return found


def summary_lines(output: list[str]) -> list[str]:
    return [line for line in output if line.startswith("[testengine]")]


def output_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The run context and the node ids of a ``--testengine-output`` file."""
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return lines[0]["run"], [line["result"]["nodeid"] for line in lines[1:]]
