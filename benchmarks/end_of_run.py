"""End of run: time from the last test finishing to the pytest process exiting.

Run from the repository root::

    python benchmarks/end_of_run.py            # 2,000 tests
    python benchmarks/end_of_run.py --quick    # tiny sizes (a smoke run)

A conftest in the generated suite notes ``time.time()`` when each test finishes
(``pytest_runtest_logfinish``) and writes the last one out; the benchmark notes the time the
process was reaped.  Candidates, run alternately: plain pytest (pytest's own end of run:
summary, teardown, interpreter exit), ``--testengine`` with a healthy collector, with an
unreachable one (a loopback port nobody listens on: connection refused) and with a hung one
(a loopback socket that accepts connections and never answers).  The default flush deadline
(5 s; 1 s with ``--quick``) bounds the last two: the rest goes to the spool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

CONFTEST = """
import os
import time

import pytest

_last = [0.0]


def pytest_runtest_logfinish(nodeid, location):
    _last[0] = time.time()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    with open(os.environ["BENCH_LAST_TEST_FILE"], "w") as f:
        f.write(repr(_last[0]))
"""

NO_OTHERS = ("-p", "no:buildkite-test-collector")
DEADLINE = 5.0  # the plugin's default flush deadline


def measure(size: int, rounds: int, warmup: int, deadline: float = DEADLINE) -> str:
    with (
        harness.workdir("end") as tmp,
        harness.Collector(tmp / "collector") as collector,
        harness.Silent() as silent,
    ):
        suite = tmp / "suite"
        tests = harness.write_suite(suite, size)
        (suite / "conftest.py").write_text(CONFTEST)
        stamp = tmp / "last-test"
        refused = f"http://127.0.0.1:{harness.free_port()}"

        def end(args: tuple[str, ...], url: str | None) -> Callable[[], float]:
            extra = {"BENCH_LAST_TEST_FILE": str(stamp)}
            if deadline != DEADLINE:
                extra["TESTENGINE_FLUSH_DEADLINE"] = str(deadline)
            if url is not None:
                extra["TESTENGINE_URL"] = url
                extra["TESTENGINE_SPOOL_DIR"] = str(tmp / "spool")
            env = harness.bench_env(**extra)
            cmd = harness.pytest_cmd(*NO_OTHERS, *args)

            def once() -> float:
                stamp.unlink(missing_ok=True)
                got = harness.run_measured(cmd, cwd=suite, env=env)
                if got.status not in (0, 1):
                    raise RuntimeError(f"{' '.join(cmd)} exited with {got.status}")
                return got.ended - float(stamp.read_text())

            return once

        found = harness.alternate(
            {
                "plain pytest": end(("-p", "no:testengine"), None),
                "--testengine, healthy collector": end(("--testengine",), collector.url),
                "--testengine, unreachable (refused)": end(("--testengine",), refused),
                "--testengine, hung (never answers)": end(("--testengine",), silent.url),
            },
            rounds=rounds,
            warmup=warmup,
            progress=harness.log,
        )
    rows = []
    base = "plain pytest"
    for name in found.names:
        extra = [a - b for a, b in zip(found.values[name], found.values[base], strict=True)]
        rows.append(
            (
                name,
                found.spread(name).fmt(" s", 3),
                "-" if name == base else harness.Spread.of(extra).fmt(" s", 3),
            )
        )
    title = (
        f"### End of run: last test finished to process exit, {tests:,} tests, flush deadline "
        f"{deadline:g} s (median (min-max) of {rounds} alternated rounds)\n\n"
    )
    return title + harness.table(["candidate", "last test to exit", "beyond plain pytest"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--size", type=int, default=None, help="tests in the suite")
    args = parser.parse_args(argv)
    size = args.size or (200 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 4)
    if args.quick:  # a short flush deadline keeps the smoke run short
        print(measure(size, rounds, warmup=0, deadline=1.0))
    else:
        print(measure(size, rounds, warmup=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
