"""Settings through real pytest runs: precedence, usage errors, and the disabled plugin."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import clean_env, stored, summary_lines
from tests.support.collector import CollectorProcess

ONE_TEST = "def test_one():\n    pass\n"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.mark.parametrize(
    ("cli", "env", "ini", "suite"),
    [
        pytest.param(True, True, True, "from-cli", id="cli-wins"),
        pytest.param(False, True, True, "from-env", id="env-over-ini"),
        pytest.param(False, False, True, "from-ini", id="ini-over-default"),
        pytest.param(False, False, False, "default", id="default"),
    ],
)
def test_precedence_in_a_real_run(
    pytester: pytest.Pytester,
    collector: CollectorProcess,
    monkeypatch: pytest.MonkeyPatch,
    cli: bool,
    env: bool,
    ini: bool,
    suite: str,
) -> None:
    ini_lines = [f"testengine_url = {collector.url}", "testengine = true"]
    if ini:
        ini_lines.append("testengine_suite = from-ini")
    pytester.makeini("[pytest]\n" + "\n".join(ini_lines) + "\n")
    pytester.makepyfile(ONE_TEST)
    if env:
        monkeypatch.setenv("TESTENGINE_SUITE", "from-env")
    args = ["--testengine-suite", "from-cli"] if cli else []
    run = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    (result,) = stored(collector, 1, suite=suite)
    assert result["nodeid"].endswith("::test_one")
    assert [s["suite"] for s in collector.suites()] == [suite]


def test_enabled_from_pyproject_toml(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    pytester.makepyprojecttoml(
        f"""
        [tool.pytest.ini_options]
        testengine = true
        testengine_url = "{collector.url}"
        testengine_batch_size = 2
        """
    )
    pytester.makepyfile(ONE_TEST)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    assert len(stored(collector, 1)) == 1
    assert summary_lines(run.outlines) == [f"[testengine] sent 1 result to {collector.url}"]


def test_ci_detection_fills_the_run_and_env_overrides_it(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "BUILDKITE": "true",
        "BUILDKITE_BUILD_ID": "build-7",
        "BUILDKITE_BRANCH": "feature/x",
        "BUILDKITE_COMMIT": "abc123",
        "BUILDKITE_PARALLEL_JOB": "1",
        "BUILDKITE_PARALLEL_JOB_COUNT": "3",
        "TESTENGINE_URL": collector.url,
        "TESTENGINE_COMMIT": "override",
    }.items():
        monkeypatch.setenv(name, value)
    # a parallel job splits the suite (docs/splitting.md): three tests, one per shard
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.parametrize('i', range(3))\ndef test_x(i):\n    pass\n"
    )
    pytester.runpytest_subprocess("--testengine", "-p", "no:cacheprovider").assert_outcomes(
        passed=1, deselected=2
    )
    stored(collector, 1)
    (run,) = collector.runs()
    assert (run["ci_provider"], run["build_id"], run["branch"], run["commit"]) == (
        "buildkite",
        "build-7",
        "feature/x",
        "override",
    )
    assert (run["shard_index"], run["shard_total"]) == (1, 3)
    assert run["tags"]["ci.provider"] == "buildkite"


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        pytest.param(
            ["--testengine"],
            {"TESTENGINE_BATCH_SIZE": "abc"},
            "",
            "ERROR: [testengine] invalid value 'abc' for TESTENGINE_BATCH_SIZE (env): "
            "expected a positive integer",
            id="env",
        ),
        pytest.param(
            ["--testengine", "--testengine-flush-deadline", "soon"],
            {},
            "",
            "ERROR: [testengine] invalid value 'soon' for --testengine-flush-deadline "
            "(command line): expected a number of seconds, 0 or more (less than a day)",
            id="cli",
        ),
        pytest.param(
            [],
            {},
            "testengine = maybe",
            "ERROR: [testengine] invalid value 'maybe' for testengine (ini file): "
            "expected one of 1, true, yes, on, 0, false, no, off",
            id="ini",
        ),
        pytest.param(
            ["--testengine", "--testengine-tag", "nokey"],
            {},
            "",
            "ERROR: [testengine] invalid value 'nokey' for --testengine-tag (command line): "
            "expected key=value pairs separated by commas, such as team=api,area=billing",
            id="tag",
        ),
        pytest.param(
            ["--testengine"],
            {"TESTENGINE_TOKEN": "two\tparts"},
            "",
            "ERROR: [testengine] invalid value <hidden> for TESTENGINE_TOKEN (env): "
            "expected one line of text, not empty",
            id="token-hidden",
        ),
    ],
)
def test_a_bad_value_is_a_one_line_usage_error(
    pytester: pytest.Pytester,
    collector: CollectorProcess,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    monkeypatch.setenv("TESTENGINE_URL", collector.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(ONE_TEST)
    run = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in run.errlines if line] == [message]
    assert "Traceback" not in run.stdout.str()
    assert collector.results() == []


def test_disabled_registers_nothing_and_sends_nothing(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTENGINE_URL", collector.url)
    pytester.makepyfile(
        """
        import threading
        import pytest

        @pytest.mark.testengine(team="x")
        def test_nothing_runs(request, testengine_tags):
            testengine_tags(still="works")
            manager = request.config.pluginmanager
            assert manager.get_plugin("testengine") is not None
            assert manager.get_plugin("testengine-recorder") is None
            assert manager.get_plugin("testengine-tagger") is None
            assert [t.name for t in threading.enumerate() if t.name.startswith("testengine")] == []
        """
    )
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    assert summary_lines(run.outlines) == []
    assert collector.results() == []


def test_enabled_starts_one_sender_thread(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTENGINE_URL", collector.url)
    monkeypatch.setenv("TESTENGINE_ENABLED", "yes")
    pytester.makepyfile(
        """
        import threading

        def test_thread(request):
            names = [t.name for t in threading.enumerate() if t.name.startswith("testengine")]
            assert names == ["testengine-sender"]
            assert request.config.pluginmanager.get_plugin("testengine-recorder") is not None
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert len(stored(collector, 1)) == 1


def test_no_testengine_switches_the_plugin_off(
    pytester: pytest.Pytester, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTENGINE_URL", collector.url)
    monkeypatch.setenv("TESTENGINE_ENABLED", "1")
    pytester.makepyfile(ONE_TEST)
    run = pytester.runpytest_subprocess("-p", "no:testengine", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
    assert summary_lines(run.outlines) == []
    assert collector.results() == []


def test_help_lists_the_options(pytester: pytest.Pytester, collector: CollectorProcess) -> None:
    run = pytester.runpytest_subprocess("--help")
    run.stdout.fnmatch_lines(
        [
            "test results streaming (pytest-testengine):",
            "*--testengine *Record results and send them to the collector.*",
            "*--testengine-url=URL*",
            "*testengine_token (string):*",
        ]
    )
    assert "--testengine-token" not in run.stdout.str()
    assert collector.results() == []
