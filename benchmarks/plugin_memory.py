"""Plugin memory: peak RSS of a pytest run with and without ``--testengine``.

Run from the repository root::

    python benchmarks/plugin_memory.py            # 20,000 and 100,000 tests
    python benchmarks/plugin_memory.py --quick    # tiny sizes (a smoke run)

The peak resident set of the pytest process itself comes from ``wait4()`` (``ru_maxrss`` of
that one child).  ``--testengine`` sends to a running ``testengine-collector serve`` on a free
loopback port.  The two candidates run alternately; the difference should not grow with the
size of the suite (the plugin keeps a bounded queue, not the results of the run).  The suites
have no failing tests (pytest's summary of failures costs failures x reports, minutes at this
size) and 2% skipped ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

NO_OTHERS = ("-p", "no:buildkite-test-collector")


def measure(sizes: tuple[int, ...], rounds: int, warmup: int) -> str:
    rows = []
    with harness.workdir("memory") as tmp, harness.Collector(tmp / "collector") as collector:
        for size in sizes:
            suite = tmp / f"suite-{size}"
            # no failures: pytest's own summary of failures grows with failures x reports
            tests = harness.write_suite(suite, size, failing=False)

            def rss(
                args: tuple[str, ...], env: dict[str, str], suite: Path = suite
            ) -> Callable[[], float]:
                cmd = harness.pytest_cmd(*NO_OTHERS, *args)

                def once() -> float:
                    got = harness.run_measured(cmd, cwd=suite, env=env)
                    if got.status not in (0, 1):
                        raise RuntimeError(f"{' '.join(cmd)} exited with {got.status}")
                    return got.max_rss_kib / 1024

                return once

            found = harness.alternate(
                {
                    "plain": rss(("-p", "no:testengine"), harness.bench_env()),
                    "testengine": rss(
                        ("--testengine",), harness.bench_env(TESTENGINE_URL=collector.url)
                    ),
                },
                rounds=rounds,
                warmup=warmup,
                progress=harness.log,
            )
            plain, te = found.spread("plain"), found.spread("testengine")
            extra = harness.Spread.of(
                [
                    a - b
                    for a, b in zip(found.values["testengine"], found.values["plain"], strict=True)
                ]
            )
            rows.append(
                (f"{tests:,}", plain.fmt(" MiB", 1), te.fmt(" MiB", 1), extra.fmt(" MiB", 1))
            )
    title = (
        f"### Plugin memory: peak RSS of the pytest process (median (min-max) of {rounds} "
        "alternated rounds)\n\n"
    )
    return title + harness.table(
        ["tests", "plain pytest", "--testengine", "difference"], rows, "rrrr"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="suite sizes")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or ((200, 1000) if args.quick else (20_000, 100_000)))
    rounds = args.rounds or 1  # peak RSS hardly varies from run to run
    print(measure(sizes, rounds, warmup=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
