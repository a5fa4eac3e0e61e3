"""The statistics the benchmarks report (``benchmarks/harness.py``): pure functions."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import harness


@pytest.mark.parametrize(
    ("n", "ranks"),
    [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (40, (14, 27))],  # published tables
)
def test_median_interval_takes_the_order_statistics_of_the_binomial_table(
    n: int, ranks: tuple[int, int]
) -> None:
    values = [float(v) for v in range(1, n + 1)]
    random.Random(n).shuffle(values)  # order of the rounds does not matter
    assert harness.median_interval(values) == (float(ranks[0]), float(ranks[1]))


def test_median_interval_needs_enough_rounds() -> None:
    assert harness.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert harness.median_interval([]) is None


def test_median_interval_covers_the_median_about_as_often_as_it_says() -> None:
    rng = random.Random(7)
    trials, covered = 2000, 0
    for _ in range(trials):
        low, high = harness.median_interval([rng.gauss(1.0, 0.05) for _ in range(20)]) or (0, 0)
        covered += low <= 1.0 <= high
    assert 0.93 <= covered / trials <= 0.99  # 95.9% for 20 values


def test_ratios_are_taken_round_by_round() -> None:
    found = harness.Alternated(["a", "b"], {"a": [2.0, 3.0, 4.0], "b": [1.0, 2.0, 4.0]})
    assert found.ratios("a", "b") == [2.0, 1.5, 1.0]
    assert found.ratio("a", "b") == harness.Spread(1.5, 1.0, 2.0)


@pytest.mark.parametrize("tests", [5000, 20000])
def test_generated_suites_have_1_percent_failing_and_2_percent_skipped_tests(
    tmp_path: Path, tests: int
) -> None:
    assert harness.write_suite(tmp_path, tests) == tests
    files = sorted(tmp_path.glob("test_gen_*.py"))
    assert len(files) == 200
    texts = [f.read_text() for f in files]
    text = "".join(texts)
    params = sum(int(part.split(")")[0]) for part in text.split("range(")[1:])
    functions = text.count("\ndef test_") - text.count("\ndef test_param(")
    assert functions + params == tests
    failing, skipped = text.count("def test_fail_"), text.count("@pytest.mark.skip(")
    assert 0.009 <= failing / tests <= 0.011
    assert 0.018 <= skipped / tests <= 0.022
    assert sum("def test_fail_" in t for t in texts) >= 40  # spread over the files


def test_a_suite_without_failures_has_none(tmp_path: Path) -> None:
    harness.write_suite(tmp_path, 5000, failing=False)
    text = "".join(f.read_text() for f in tmp_path.glob("test_gen_*.py"))
    assert "def test_fail_" not in text
    assert text.count("@pytest.mark.skip(") == 96
