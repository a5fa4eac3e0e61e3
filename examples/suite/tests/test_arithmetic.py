import time

import pytest


@pytest.mark.parametrize(("a", "b", "expected"), [(1, 1, 2), (2, 3, 5), (10, -4, 6)])
def test_add(a: int, b: int, expected: int) -> None:
    assert a + b == expected


@pytest.mark.testengine(tags={"team": "core"})
def test_division_by_zero() -> None:
    with pytest.raises(ZeroDivisionError):
        1 / 0  # noqa: B018


@pytest.mark.slow
def test_slow_sum() -> None:
    time.sleep(0.2)
    assert sum(range(1000)) == 499500
