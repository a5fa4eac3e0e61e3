"""The plugin's modules load from their bytecode, not through pytest's assert rewriting.

pytest rewrites the asserts of every module of an installed plugin, which means parsing and
compiling each one again in every run that may not write bytecode (about 25 ms for the
modules a recording run loads).  ``pytest_testengine.OwnModules`` finds them first.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.machinery import SourceFileLoader

import pytest

from pytest_testengine import OwnModules

LOADERS = """
import sys

def pytest_sessionfinish(session):
    workerinput = getattr(session.config, "workerinput", None)
    worker = workerinput["workerid"] if workerinput else "controller"
    with open(f"loaders-{worker}.txt", "w") as out:
        for name in sorted(sys.modules):
            if name.startswith("pytest_testengine."):
                out.write(f"{name} {type(sys.modules[name].__loader__).__name__}\\n")
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_recording_run_loads_no_module_of_the_plugin_through_the_rewriting_hook(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: tuple[str, ...]
) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as on many CI images
    pytester.makeconftest(LOADERS)
    pytester.makepyfile(
        test_a="""
        def test_ok():
            pass

        def test_fails():
            values = [1, 2]
            assert values == [1, 3]
        """
    )
    out = pytester.path / "results.jsonl"
    run = pytester.runpytest_subprocess(
        *xdist, f"--testengine-output={out}", "-W", "error::pytest.PytestAssertRewriteWarning"
    )
    run.assert_outcomes(passed=1, failed=1)
    # the user's asserts are rewritten as ever: the failure explains itself
    run.stdout.fnmatch_lines(["*At index 1 diff: 2 != 3*"])
    workers = ("gw0", "gw1") if xdist else ()
    for process in ("controller", *workers):
        lines = (pytester.path / f"loaders-{process}.txt").read_text().splitlines()
        loaded = dict(line.split() for line in lines)
        assert "pytest_testengine.plugin" in loaded, process
        assert "pytest_testengine.tagging" in loaded, process
        assert set(loaded.values()) == {"SourceFileLoader"}, (process, loaded)
    assert len(out.read_bytes().splitlines()) == 3  # the run context and two results


def test_finds_only_modules_of_the_package() -> None:
    import pytest_testengine

    spec = OwnModules.find_spec("pytest_testengine.capture", pytest_testengine.__path__)
    assert spec is not None
    assert isinstance(spec.loader, SourceFileLoader)
    assert spec.origin is not None
    assert spec.origin.endswith("capture.py")
    assert OwnModules.find_spec("pytest_testengine.nope", pytest_testengine.__path__) is None
    assert OwnModules.find_spec("collector_server.app", None) is None
    assert OwnModules.find_spec("pytest_testengine_other.x", ["."]) is None


def test_is_installed_once_even_after_a_reload() -> None:
    code = (
        "import importlib, sys, pytest_testengine\n"
        "importlib.reload(pytest_testengine)\n"
        "print(sum(getattr(f, '__qualname__', '') == 'OwnModules' for f in sys.meta_path))\n"
        "print(getattr(sys.meta_path[0], '__qualname__', None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "OwnModules"]
