"""Plugin parts: where the plugin's time goes inside a test run, part by part.

Run from the repository root::

    python benchmarks/plugin_parts.py            # 5,000 tests, 5 runs of each candidate
    python benchmarks/plugin_parts.py --quick    # tiny sizes (a smoke run)

The whole-run comparison (``plugin_overhead.py``) cannot see a change of 10-20 ms in a run
of 4-5 s on a shared machine: its rounds spread by several percent.  This script times the
plugin's parts from inside the run instead: a probe plugin (``-p``, written by this script)
wraps them with ``time.perf_counter()`` on pytest's main thread, and counts the cyclic
garbage collector's work during the session (``gc.callbacks``), which the plugin's objects
change for the whole run.  The wrappers cost a little themselves (a thread check and two
clock reads per call): the figures are for comparing one version of the plugin with another
on the same machine, not for adding up to the overhead.

Candidates, run alternately (the same generated suite as ``plugin_overhead.py``): plain
pytest (for the garbage collector's baseline), ``--testengine`` sending to a loopback server
of this script's own that answers 202 (the null sink), and ``--testengine-output FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

#: The probe plugin: wraps the plugin's parts before pytest registers them, and writes what
#: it measured as one JSON line to $PROBE_OUT when pytest ends.
PROBE = '''
import gc, json, os, threading, time

import pytest

T = {}
MAIN = threading.main_thread()
IN_HOOK = []  # non-empty while the recording hook runs


def _add(name, since):
    T[name] = T.get(name, 0.0) + time.perf_counter() - since


def _gc(phase, info):
    if phase == "start":
        T["_gc_start"] = time.perf_counter()
    elif "_gc_start" in T and T.get("_session"):
        _add("gc", T["_gc_start"])
        if info["generation"] == 2:
            T["full collections"] = T.get("full collections", 0) + 1


gc.callbacks.append(_gc)


def _timed(cls, attribute, name, *, hook=False, inside=False):
    """Time ``cls.attribute`` on the main thread (``inside``: only within the hook)."""
    original = getattr(cls, attribute)

    def timed(*args, **kwargs):
        if threading.current_thread() is not MAIN or (inside and not IN_HOOK):
            return original(*args, **kwargs)
        since = time.perf_counter()
        if hook:
            IN_HOOK.append(True)
        try:
            return original(*args, **kwargs)
        finally:
            if hook:
                IN_HOOK.pop()
            _add(name, since)

    timed.__name__ = original.__name__  # pluggy reads a hook's name and arguments
    timed.__wrapped__ = original
    setattr(cls, attribute, timed)


@pytest.hookimpl(tryfirst=True)  # before the plugin registers its recorder
def pytest_configure(config):
    if config.pluginmanager.is_blocked("testengine"):
        return  # plain pytest
    since = time.perf_counter()
    from pytest_testengine import capture, recording, sender

    _add("import", since)
    if hasattr(recording.Recorder, "pytest_runtest_logreport"):  # before the feeder
        _timed(recording.Recorder, "pytest_runtest_logreport", "hook", hook=True)
    else:  # the sender's submit is the hook (registered once the sender started)
        _timed(sender.Sender, "submit", "hook", hook=True)
    _timed(capture.Assembler, "convert", "convert", inside=True)
    _timed(sender.Sender, "_prepare", "prepare", inside=True)
    _timed(recording.Recorder, "start", "start")
    _timed(recording.Recorder, "finish", "finish")


def pytest_sessionstart(session):
    T["_session"] = True


def pytest_unconfigure(config):
    T["_session"] = False
    out = {k: v for k, v in T.items() if not k.startswith("_")}
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write(json.dumps(out) + "\\n")
'''

#: (row label, key in the probe's output) in the order of the table.
PARTS = (
    ("the recording hook, all its calls", "hook"),
    ("of it: reports to results (`Assembler.convert`)", "convert"),
    ("of it: encoding full batches (`Sender._prepare`)", "prepare"),
    ("imports of the recording modules", "import"),
    ("start (the sender; the HTTP client's imports when sending)", "start"),
    ("end of the run (`Recorder.finish`: the rest, the last post)", "finish"),
    ("cyclic garbage collector, whole session", "gc"),
)


def measure(tests: int, runs: int) -> str:
    with harness.workdir("parts") as tmp, harness.UploadSink() as sink:
        suite = tmp / "suite"
        count = harness.write_suite(suite, tests)
        (tmp / "probe_parts.py").write_text(PROBE)
        no_bk = ("-p", "no:buildkite-test-collector")
        candidates = {
            "plain pytest": ("-p", "no:testengine"),
            "--testengine (null sink)": ("--testengine",),
            "--testengine-output file": (f"--testengine-output={tmp / 'te.jsonl'}",),
        }
        found: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}

        def run(name: str, args: tuple[str, ...]) -> Callable[[], float]:
            out = tmp / f"probe-{list(candidates).index(name)}.jsonl"
            env = harness.bench_env(
                TESTENGINE_URL=sink.url,
                PROBE_OUT=str(out),
                PYTHONPATH=os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])),
            )
            cmd = harness.pytest_cmd(*no_bk, "-p", "probe_parts", *args)

            def once() -> float:
                out.unlink(missing_ok=True)
                got = harness.run_measured(cmd, cwd=suite, env=env)
                if got.status not in (0, 1):
                    raise RuntimeError(f"{' '.join(cmd)} exited with {got.status}")
                found[name].append(json.loads(out.read_text()))
                return got.wall

            return once

        harness.alternate(
            {name: run(name, args) for name, args in candidates.items()},
            rounds=runs,
            warmup=0,
            progress=harness.log,
        )
    for name in candidates:  # the probe must have seen the plugin's parts where it runs
        seen = {key for probe in found[name] for key in probe}
        if name != "plain pytest" and not {"hook", "import", "start", "finish"} <= seen:
            raise RuntimeError(f"{name}: the probe timed none of {sorted(seen)}")
    rows = []
    for label, key in PARTS:
        cells = []
        for name in candidates:
            if name == "plain pytest" and key != "gc":
                cells.append("-")
                continue
            # 0: not called in the hook (no full batch in a tiny suite)
            ms = [probe.get(key, 0.0) * 1000 for probe in found[name]]
            cells.append(harness.Spread.of(ms).fmt(" ms", 1))
        rows.append((label, *cells))
    fulls = [
        "/".join(str(int(probe.get("full collections", 0))) for probe in found[name])
        for name in candidates
    ]
    rows.append(("full collections, each run", *fulls))
    title = (
        f"### Plugin parts, {count:,} tests in 200 files: main thread time "
        f"(median (min-max) of {runs} alternated runs)\n\n"
    )
    return title + harness.table(["part", *candidates], rows, "lrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--tests", type=int, default=None, help="suite size")
    parser.add_argument("--runs", type=int, default=None, help="runs of each candidate")
    args = parser.parse_args(argv)
    tests = args.tests or (200 if args.quick else 5000)
    runs = args.runs or (1 if args.quick else 5)
    harness.compile_packages()
    print(measure(tests, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
