"""Splitting end to end: a generated suite of 200 tests in 20 files, real collector process,
shards as concurrent pytest processes.  The union of the shards is exactly the unsplit run,
every shard agrees on the plan (cached, or the same local fallback with the collector down),
and in dynamic mode a shard killed with SIGKILL loses no test."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.helpers import POLL, output_file, stored
from tests.support.collector import CollectorFactory, CollectorProcess, collector_env, free_port

FILES = 20
PER_FILE = 10
TESTS = FILES * PER_FILE
SHARDS = 4
SUITE = "e2e"
RUN_TIMEOUT = 180.0  # seconds for one pytest process
CONFTEST = """
import os, pathlib, time
import pytest

@pytest.fixture(autouse=True)
def _hang_when_asked():
    marker = os.environ.get("E2E_HANG_MARKER")
    if marker:  # this shard stops in its first test, holding a leased chunk, until killed
        pathlib.Path(marker).write_text("hanging")
        time.sleep(120)
    yield
"""


def write_suite(root: Path) -> Path:
    """20 files of 10 tests; files differ in duration (0 to 4 ms per test)."""
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(CONFTEST)
    for f in range(FILES):
        body = ["import time", "import pytest", ""]
        body += [
            f"@pytest.mark.parametrize('i', range({PER_FILE}))",
            "def test_case(i):",
            f"    time.sleep({(f % 5) / 1000})",
        ]
        (root / f"test_file{f:02d}.py").write_text("\n".join(body) + "\n")
    return root


def pytest_command(url: str, build: str, *args: str, output: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--testengine"]
    command += ["--testengine-url", url, "--testengine-suite", SUITE]
    command += ["--testengine-build-id", build, "--testengine-flush-deadline", "5", *args]
    if output is not None:
        command += ["--testengine-output", str(output)]
    return command


@contextlib.contextmanager
def processes(commands: Sequence[list[str]], cwd: Path, **env: str) -> Iterator[list[Any]]:
    """Start every command at once; kill whatever still runs at the end."""
    started: list[subprocess.Popen[str]] = []
    try:
        for command in commands:
            started.append(
                subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=collector_env(env),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=RUN_TIMEOUT)


def finish(procs: Sequence[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, out
        outputs.append(out)
    return outputs


def run_shards(
    root: Path, url: str, build: str, *args: str, shards: Sequence[int] = range(SHARDS)
) -> list[tuple[dict[str, Any], list[str]]]:
    """Run the shards concurrently; each one's run context and the node ids it ran."""
    outputs = [root / f"{build}-{index}.jsonl" for index in shards]
    commands = [
        pytest_command(
            url,
            build,
            "--split-index",
            str(index),
            "--split-total",
            str(SHARDS),
            *args,
            output=output,
        )
        for index, output in zip(shards, outputs, strict=True)
    ]
    with processes(commands, root) as procs:
        finish(procs)
    return [output_file(output) for output in outputs]


def assert_exact_union(ran: Sequence[list[str]], expected: set[str]) -> None:
    flat = [test_id for ids in ran for test_id in ids]
    assert len(flat) == len(set(flat)), "a test ran twice"
    assert set(flat) == expected


def build_report(collector: CollectorProcess, build: str) -> dict[str, Any]:
    response = collector.get(f"/v1/suites/{SUITE}/builds/{build}")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    return write_suite(tmp_path / "suite")


@pytest.fixture
def recorded(suite: Path, collector_factory: CollectorFactory) -> tuple[CollectorProcess, set[str]]:
    """A collector with short leases that has the durations of one unsplit run."""
    collector = collector_factory(args=["--lease-seconds", "2", "--lease-margin", "0"])
    output = suite / "unsplit.jsonl"
    with processes([pytest_command(collector.url, "unsplit", output=output)], suite) as procs:
        finish(procs)
    _, ids = output_file(output)
    assert len(ids) == TESTS
    stored(collector, TESTS, SUITE)  # the processor has the durations
    return collector, set(ids)


def test_static_shards_cover_the_unsplit_run_exactly_and_agree_on_a_cached_plan(
    suite: Path, recorded: tuple[CollectorProcess, set[str]]
) -> None:
    collector, unsplit = recorded
    shards = run_shards(suite, collector.url, "b1")
    assert_exact_union([ids for _, ids in shards], unsplit)
    plan_ids = {run["plan_id"] for run, _ in shards}
    assert len(plan_ids) == 1
    assert [run["shard_index"] for run, _ in shards] == list(range(SHARDS))

    stored(collector, 2 * TESTS, SUITE)  # the shards' durations changed the statistics
    (late,) = run_shards(suite, collector.url, "b1", shards=[2])
    assert late[0]["plan_id"] in plan_ids  # the cached plan, not a new one
    assert late[1] == shards[2][1]

    report = build_report(collector, "b1")
    assert (report["one_plan"], report["shards_reported"]) == (True, list(range(SHARDS)))
    assert (report["planned"], report["ran"], report["not_run_count"]) == (TESTS, TESTS, 0)
    assert report["plans"][0]["asked_by"] == list(range(SHARDS))


def test_collector_down_every_shard_uses_the_same_fallback(suite: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    shards = run_shards(suite, url, "b-down")
    plan_ids = {run["plan_id"] for run, _ in shards}
    assert len(plan_ids) == 1
    assert next(iter(plan_ids)).startswith("local-")
    every = {f"test_file{f:02d}.py::test_case[{i}]" for f in range(FILES) for i in range(PER_FILE)}
    assert_exact_union([ids for _, ids in shards], every)


def test_dynamic_mode_a_killed_shard_loses_no_test(
    suite: Path, recorded: tuple[CollectorProcess, set[str]]
) -> None:
    collector, unsplit = recorded
    marker = suite / "hanging"
    args = ("--split-mode", "dynamic", "--split-index", "0", "--split-total", str(SHARDS))
    with processes(
        [pytest_command(collector.url, "dyn", *args)], suite, E2E_HANG_MARKER=str(marker)
    ) as (victim,):
        deadline = time.monotonic() + RUN_TIMEOUT
        while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL)  # polling a condition with a deadline
        assert marker.exists(), "shard 0 never started a test"
        victim.kill()  # SIGKILL while it holds a leased chunk
        victim.wait(RUN_TIMEOUT)
    survivors = run_shards(suite, collector.url, "dyn", "--split-mode", "dynamic", shards=[1, 2, 3])
    assert_exact_union([ids for _, ids in survivors], unsplit)
    assert len({run["plan_id"] for run, _ in survivors}) == 1

    stored(collector, 2 * TESTS, SUITE)
    report = build_report(collector, "dyn")
    assert (report["one_plan"], report["not_run_count"], report["ran_more_than_once"]) == (
        True,
        0,
        0,
    )
    assert report["dynamic"]["re_leased"] >= 1
    assert report["dynamic"]["completed"] == report["dynamic"]["chunks"]
