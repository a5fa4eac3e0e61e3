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
