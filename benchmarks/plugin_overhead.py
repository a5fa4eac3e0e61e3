"""Plugin overhead: wall time of a pytest run with each results tool, against plain pytest.

Run from the repository root::

    python benchmarks/plugin_overhead.py            # 5,000 and 20,000 tests, also with -n 2
    python benchmarks/plugin_overhead.py --quick    # tiny sizes (a smoke run)

Generated suites of trivial tests in 200 files (half plain functions, half one parametrized
function per file; 1% fail, 2% skipped).  Candidates, run alternately round after round after a
warm-up round (every other round in reverse order; 10 rounds at 5,000 tests, where one run
takes seconds and the spread of a single pair is several percent), every one with the same
base flags (``-q -p no:cacheprovider``):

- plain pytest (every results plugin installed here turned off: ``-p no:...``);
- ``--testengine``, sending to a running ``testengine-collector serve`` (embedded default) on a
  free loopback port with a temporary data directory;
- ``--testengine`` sending to a loopback server of this script's own that answers 202 and
  keeps nothing (the plugin's own cost, without the collector's work on the same two cores);
- ``--testengine-output FILE`` (JSON lines, no collector);
- ``--junitxml FILE``;
- pytest-reportlog ``--report-log FILE``;
- buildkite-test-collector, uploading to a loopback HTTP server of this script's own
  (``BUILDKITE_ANALYTICS_API_URL``, ``BUILDKITE_ANALYTICS_TOKEN``).

File paths are given as ``--option=PATH``: a separate ``PATH`` argument would count in
pytest's choice of the root directory (a plugin's options are not known yet when pytest picks
it), which changes the collection tree and the work of every test.

With ``-n 2`` (pytest-xdist) the same comparison runs for plain pytest and ``--testengine``.
The other tools run at the smallest size only (``--all``: at every size; it doubles the run
time), ``--testengine`` and ``--testengine-output`` at every size.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

#: The results plugins installed in the bench environment; each candidate turns off the others.
OTHERS = {
    "testengine": ("-p", "no:testengine"),
    "buildkite": ("-p", "no:buildkite-test-collector"),
}


def candidates(
    suite: Path,
    out: Path,
    collector_url: str,
    sink_url: str,
    xdist: bool,
    cpu: dict[str, list[float]] | None = None,
    tools: bool = True,
) -> dict[str, Callable[[], float]]:
    """The candidates' runs: each returns its wall time (and adds its CPU time to ``cpu``)."""
    cpu = {} if cpu is None else cpu
    env = harness.bench_env()
    bk_env = harness.bench_env(
        BUILDKITE_ANALYTICS_TOKEN="bench-token", BUILDKITE_ANALYTICS_API_URL=sink_url
    )
    te_env = harness.bench_env(TESTENGINE_URL=collector_url)
    null_env = harness.bench_env(TESTENGINE_URL=sink_url)
    par = ("-n", "2") if xdist else ()

    def run(name: str, args: tuple[str, ...], environ: dict[str, str]) -> Callable[[], float]:
        cmd = harness.pytest_cmd(*par, *args)

        def once() -> float:
            got = harness.run_measured(cmd, cwd=suite, env=environ)
            if got.status not in (0, 1):
                raise RuntimeError(f"{' '.join(cmd)} exited with {got.status}")
            cpu.setdefault(name, []).append(got.cpu)
            return got.wall

        return once

    no_bk, no_te = OTHERS["buildkite"], OTHERS["testengine"]
    found = {
        "plain pytest": run("plain pytest", (*no_bk, *no_te), env),
        "--testengine (collector)": run(
            "--testengine (collector)", (*no_bk, "--testengine"), te_env
        ),
        "--testengine (null sink)": run(
            "--testengine (null sink)", (*no_bk, "--testengine"), null_env
        ),
    }
    if xdist:
        return found
    found["--testengine-output file"] = run(
        "--testengine-output file", (*no_bk, f"--testengine-output={out / 'te.jsonl'}"), env
    )
    if not tools:
        return found
    found.update(
        {
            "--junitxml": run(
                "--junitxml", (*no_bk, *no_te, f"--junitxml={out / 'junit.xml'}"), env
            ),
            "pytest-reportlog": run(
                "pytest-reportlog",
                (*no_bk, *no_te, f"--report-log={out / 'report.jsonl'}"),
                env,
            ),
            "buildkite-test-collector": run("buildkite-test-collector", no_te, bk_env),
        }
    )
    return {name: once for name, once in found.items() if name not in missing()}


#: Candidates that need a package of their own (the bench environment installs them).
PACKAGES = {
    "pytest-reportlog": "pytest_reportlog",
    "buildkite-test-collector": "buildkite_test_collector",
}


def missing() -> list[str]:
    return [name for name, module in PACKAGES.items() if importlib.util.find_spec(module) is None]


def measure(
    sizes: tuple[int, ...],
    rounds: int | None,
    xdist_sizes: tuple[int, ...],
    warmup: int = 1,
    tool_sizes: tuple[int, ...] | None = None,
) -> str:
    """One table per size (and per xdist size); the first comparison gets ``warmup`` rounds
    (the machine is warm for the next ones).  ``rounds`` None: 10 up to 5,000 tests, else 4.
    The other tools run at ``tool_sizes`` (None: every size)."""
    sections: list[str] = []
    counts: dict[int, int] = {}
    with (
        harness.workdir("overhead") as tmp,
        harness.UploadSink() as sink,
        harness.Collector(tmp / "collector") as collector,
    ):
        for xdist in (False, True):
            for size in xdist_sizes if xdist else sizes:
                suite = tmp / f"suite-{size}"
                if size not in counts:
                    counts[size] = harness.write_suite(suite, size)
                out = tmp / "out"
                out.mkdir(exist_ok=True)
                cpu: dict[str, list[float]] = {}
                found = harness.alternate(
                    candidates(
                        suite,
                        out,
                        collector.url,
                        sink.url,
                        xdist,
                        cpu,
                        tools=tool_sizes is None or size in tool_sizes,
                    ),
                    rounds=rounds or (10 if size <= 5000 else 4),
                    warmup=warmup if not sections else 0,
                    progress=harness.log,
                )
                kept = len(found.values["plain pytest"])
                cpu = {name: values[-kept:] for name, values in cpu.items()}
                sections.append(render(found, counts[size], xdist, cpu))
    return "\n\n".join(sections)


def render(found: harness.Alternated, tests: int, xdist: bool, cpu: dict[str, list[float]]) -> str:
    base = "plain pytest"
    rows = []
    for name in found.names:
        wall = found.spread(name)
        cpu_ratio = harness.Spread.of([a / b for a, b in zip(cpu[name], cpu[base], strict=True)])
        cpu_text = f"{(cpu_ratio.median - 1) * 100:+.1f}%"
        if name == base:
            rows.append(
                (name, wall.fmt(" s"), "-", "-", "-", harness.Spread.of(cpu[name]).fmt(" s"))
            )
            continue
        ratio = found.ratio(name, base)
        interval = harness.median_interval(found.ratios(name, base))
        interval_text = (
            f"{(interval[0] - 1) * 100:+.1f} to {(interval[1] - 1) * 100:+.1f}%"
            if interval
            else "(too few rounds)"
        )
        extra = [a - b for a, b in zip(found.values[name], found.values[base], strict=True)]
        per_test = harness.Spread.of([e / tests * 1e6 for e in extra])
        rows.append(
            (
                name,
                wall.fmt(" s"),
                f"{(ratio.median - 1) * 100:+.1f}% ({(ratio.low - 1) * 100:+.1f} to "
                f"{(ratio.high - 1) * 100:+.1f})",
                interval_text,
                per_test.fmt("", 0),
                cpu_text,
            )
        )
    if not xdist:
        rows += [
            (name, f"not installed (pip install {name})", "-", "-", "-", "-") for name in missing()
        ]
    title = (
        f"### Plugin overhead, {tests:,} tests in 200 files"
        + (", pytest-xdist -n 2" if xdist else "")
        + f" (median (min-max) of {len(found.values[base])} alternated rounds)\n\n"
    )
    return title + harness.table(
        [
            "candidate",
            "wall time",
            "overhead vs plain",
            "95% interval of the overhead",
            "µs per test",
            "CPU time of pytest (vs plain)",
        ],
        rows,
        "lrrrrr",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="suite sizes")
    parser.add_argument("--all", action="store_true", help="the other tools at every size")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or ((200,) if args.quick else (5000, 20000)))
    rounds = args.rounds or (1 if args.quick else None)
    xdist_sizes = sizes[-1:]
    tools_at = None if args.all else sizes[:1]
    harness.compile_packages()
    print(measure(sizes, rounds, xdist_sizes, warmup=0 if args.quick else 1, tool_sizes=tools_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
