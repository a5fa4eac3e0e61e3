"""Delivery when the collector is down, failing, slow or refusing: the run is never hurt,
no result is lost, and ``testengine upload`` delivers the spool exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.plugin.helpers import by_nodeid, clean_env, stored, summary_lines
from tests.plugin.scripted_server import Answer, scripted_server
from tests.support.collector import CollectorFactory, CollectorProcess

TESTS = 30
SUITE = f"""
import pytest

@pytest.mark.parametrize("i", range({TESTS - 1}))
def test_many(i):
    pass

def test_fails():
    assert False
"""
DEADLINE = 2.0


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def upload(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_testengine", "upload", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def run_suite(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_suite=SUITE)
    return pytester.runpytest_subprocess(
        "--testengine",
        "--testengine-url",
        url,
        "--testengine-flush-deadline",
        str(DEADLINE),
        "-p",
        "no:cacheprovider",
        *args,
    )


def run_without_plugin(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_suite=SUITE)
    return pytester.runpytest_subprocess("-p", "no:testengine", "-p", "no:cacheprovider")


def spool_files(pytester: pytest.Pytester) -> list[Path]:
    spool = pytester.path / ".testengine" / "spool"
    return sorted(spool.glob("*.json")) if spool.exists() else []


def test_collector_down_run_unhurt_spooled_then_uploaded_exactly_once(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    collector.stop()
    without = run_without_plugin(pytester)
    run = run_suite(pytester, collector.url)
    assert run.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    run.assert_outcomes(passed=TESTS - 1, failed=1)
    # No more than the flush deadline added (generous margin for process start-up noise).
    assert run.duration - without.duration < DEADLINE + 3.0
    spool = pytester.path / ".testengine" / "spool"
    assert summary_lines(run.outlines) == [
        f"[testengine] sent 0 results to {collector.url}; could not reach the collector at "
        f"{collector.url} (connection refused); spooled {TESTS} results to {spool}; send them "
        f"with: testengine upload --spool {spool} --url {collector.url}"
    ]
    assert "Traceback" not in run.stdout.str() + run.stderr.str()
    files = spool_files(pytester)
    assert files
    kept = pytester.path / "copy"
    shutil.copytree(spool, kept)

    collector.start()
    done = upload("--spool", str(spool), "--url", collector.url)
    assert done.returncode == 0, done.stdout + done.stderr
    n = len(files)
    assert done.stdout == (
        f"[testengine] uploaded {TESTS} results ({n} file{'s' if n > 1 else ''}) from {spool} "
        f"to {collector.url}\n"
    )
    assert spool_files(pytester) == []
    first = by_nodeid(stored(collector, TESTS))
    assert len(first) == TESTS

    # Upload the same batches again: the collector keeps each result once.
    shutil.rmtree(spool)
    shutil.copytree(kept, spool)
    again = upload("--spool", str(spool), "--url", collector.url)
    assert again.returncode == 0, again.stdout + again.stderr
    second = by_nodeid(stored(collector, TESTS))
    assert {r["id"] for r in second.values()} == {r["id"] for r in first.values()}
    assert upload("--spool", str(spool), "--url", collector.url).stdout == (
        f"[testengine] nothing to upload in {spool}\n"
    )


def test_upload_while_the_collector_is_still_down_keeps_the_files(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    collector.stop()
    run_suite(pytester, collector.url, "--testengine-flush-deadline", "0")
    files = spool_files(pytester)
    assert files
    spool = pytester.path / ".testengine" / "spool"
    env = {**os.environ, "TESTENGINE_FLUSH_DEADLINE": "0.5"}
    started = time.monotonic()
    done = upload("--spool", str(spool), "--url", collector.url, env=env)
    assert time.monotonic() - started < 0.5 + 10.0  # gives up after the deadline, not later
    assert done.returncode == 1
    assert done.stdout.startswith(
        f"[testengine] uploaded 0 results (0 files) from {spool} to {collector.url}; "
        f"{len(files)} file"
    )
    assert f"could not reach the collector at {collector.url} (connection refused)" in done.stdout
    assert spool_files(pytester) == files
    assert collector.output() == "" or "POST" not in collector.output()


@pytest.mark.parametrize(
    "script",
    [
        pytest.param([Answer(500, body=b"boom")], id="500"),
        pytest.param([Answer(429, {"Retry-After": "1"})], id="429-retry-after"),
        pytest.param(
            [Answer(503, {"Retry-After": "0"}), Answer(500), Answer(502)], id="several-5xx"
        ),
    ],
)
def test_transient_errors_are_retried_and_everything_arrives_once(
    pytester: pytest.Pytester, collector: CollectorProcess, script: list[Answer]
) -> None:
    with scripted_server(list(script), upstream=collector.url) as proxy:
        run = run_suite(
            pytester,
            proxy.url,
            "--testengine-batch-size",
            "10",
            "--testengine-flush-deadline",
            "10",
        )
        requests = list(proxy.requests)
    run.assert_outcomes(passed=TESTS - 1, failed=1)
    assert summary_lines(run.outlines) == [f"[testengine] sent {TESTS} results to {proxy.url}"]
    assert len(requests) == TESTS // 10 + len(script)  # every error cost exactly one retry
    results = by_nodeid(stored(collector, TESTS))
    assert len(results) == TESTS
    if script[0].headers.get("Retry-After") == "1":
        assert requests[1].at - requests[0].at >= 0.9  # waited as told


def test_a_rejected_batch_is_not_retried_and_is_counted_as_dropped(
    pytester: pytest.Pytester,
) -> None:
    error = {"error": {"code": "invalid_field", "message": "bad outcome", "field": "outcome"}}
    answer = Answer(422, {"Content-Type": "application/json"}, orjson.dumps(error))
    with scripted_server([answer] * 5) as refusing:
        without = run_without_plugin(pytester)
        run = run_suite(pytester, refusing.url)
        requests = list(refusing.requests)
    assert run.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    assert len(requests) == 1  # a 4xx other than 408/429 is final: no retry
    assert summary_lines(run.outlines) == [
        f"[testengine] sent 0 results to {refusing.url}; the collector rejected the batch with "
        f"422 (invalid_field: bad outcome (field outcome)); dropped {TESTS} results "
        "(see docs/troubleshooting.md#results-were-dropped)"
    ]
    assert spool_files(pytester) == []


def test_a_hanging_collector_costs_at_most_the_deadline(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    with scripted_server([Answer(202, delay=30.0)] * 5) as slow:
        without = run_without_plugin(pytester)
        run = run_suite(pytester, slow.url, "--testengine-flush-deadline", "1")
    assert run.ret == without.ret
    assert run.duration - without.duration < 1.0 + 3.0
    line = summary_lines(run.outlines)[0]
    assert line.startswith(
        f"[testengine] sent 0 results to {slow.url}; "
        f"the collector at {slow.url} did not answer in time"
    )
    assert f"spooled {TESTS} results to " in line
    spool = pytester.path / ".testengine" / "spool"
    done = upload("--spool", str(spool), "--url", collector.url)
    assert done.returncode == 0, done.stdout
    assert len(by_nodeid(stored(collector, TESTS))) == TESTS


def test_a_bad_token_spools_and_upload_with_the_right_token_delivers(
    pytester: pytest.Pytester, collector_factory: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secured = collector_factory(tokens=["acme"])
    token = secured.tokens["acme"]
    monkeypatch.setenv("TESTENGINE_TOKEN", "not-the-token")
    run = run_suite(pytester, secured.url)
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    line = summary_lines(run.outlines)[0]
    assert line.startswith(
        f"[testengine] sent 0 results to {secured.url}; the collector rejected the batch with 401 ("
    )
    assert f"spooled {TESTS} results to" in line
    assert "not-the-token" not in run.stdout.str() + run.stderr.str()
    spool = pytester.path / ".testengine" / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTENGINE_")}
    done = upload(
        "--spool", str(spool), "--url", secured.url, env={**env, "TESTENGINE_TOKEN": token}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(by_nodeid(stored(secured, TESTS, token=token))) == TESTS


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(
            ["--url", "nope"],
            {},
            "[testengine] invalid value 'nope' for --url (command line): expected an http:// or "
            "https:// URL such as http://127.0.0.1:8765",
            id="url",
        ),
        pytest.param(
            [],
            {"TESTENGINE_URL": "ftp://x"},
            "[testengine] invalid value 'ftp://x' for TESTENGINE_URL (env): expected an http:// "
            "or https:// URL such as http://127.0.0.1:8765",
            id="env",
        ),
    ],
)
def test_upload_usage_errors(
    tmp_path: Path, collector: CollectorProcess, args: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESTENGINE_")}
    done = upload("--spool", str(tmp_path), *args, env={**clean, **env})
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    assert collector.results() == []
