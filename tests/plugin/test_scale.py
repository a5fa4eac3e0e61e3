"""A large generated suite: every result pytest counts reaches the collector, once."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.plugin.helpers import clean_env, stored, summary_lines
from tests.support.collector import CollectorProcess

FILES = 200
PER_FILE = 100  # 20,000 tests
MODULE = """
import pytest

@pytest.mark.parametrize("i", range({params}))
def test_param(i):
    assert i != {failing}

def test_skipped():
    pytest.skip("not here")

{plain}
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def generate(pytester: pytest.Pytester) -> None:
    plain = "\n".join(f"def test_plain_{n}():\n    pass\n" for n in range(PER_FILE // 2 - 1))
    params = PER_FILE - PER_FILE // 2
    files = {
        f"test_gen_{f:03d}": MODULE.format(params=params, failing=f % 7, plain=plain)
        for f in range(FILES)
    }
    pytester.makepyfile(**files)


def test_a_20000_test_suite_is_stored_exactly_as_pytest_counted_it(
    pytester: pytest.Pytester, collector: CollectorProcess
) -> None:
    generate(pytester)
    run = pytester.runpytest_subprocess(
        "--testengine", "--testengine-url", collector.url, "-p", "no:cacheprovider", "-q"
    )
    total = FILES * PER_FILE
    run.assert_outcomes(passed=total - 2 * FILES, failed=FILES, skipped=FILES)
    assert run.ret == pytest.ExitCode.TESTS_FAILED
    assert summary_lines(run.outlines) == [
        f"[testengine] sent {total:,} results to {collector.url}"
    ]

    results = stored(collector, total, timeout=120.0)
    assert len(results) == total
    assert len({r["id"] for r in results}) == total
    assert len({r["nodeid"] for r in results}) == total
    assert Counter(r["outcome"] for r in results) == {
        "passed": total - 2 * FILES,
        "failed": FILES,
        "skipped": FILES,
    }
    (only_run,) = collector.runs()
    assert only_run["total"] == total
