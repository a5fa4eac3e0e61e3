import sys

import pytest


class TestCase:
    def test_upper(self) -> None:
        assert "testengine".upper() == "TESTENGINE"

    @pytest.mark.parametrize("word", ["pytest", "kafka", "sqlite"])
    def test_title(self, word: str) -> None:
        assert word.title()[0].isupper()


@pytest.mark.skipif(sys.platform != "win32", reason="only meaningful on Windows paths")
def test_windows_separator() -> None:
    assert "\\" in r"C:\temp"


@pytest.mark.xfail(reason="known bug: unicode casefold of the German sharp s", strict=True)
def test_known_bug() -> None:
    assert "ß".upper() == "ß"


def test_runtime_tags(testengine_tags) -> None:  # type: ignore[no-untyped-def]
    testengine_tags(feature="strings")
    assert "a" in "abc"
