"""End-to-end freshness: from a test finishing to its result being readable in the read API.

Run from the repository root::

    python benchmarks/freshness.py            # 3 runs of 1,500 tests of 4 ms each
    python benchmarks/freshness.py --quick    # tiny sizes (a smoke run)

``pytest --testengine`` (default settings: batches of 1,000 or 1 s old) sends to a running
``testengine-collector serve`` (embedded default: local log, in-process processor, SQLite
store).  Meanwhile this script pages through ``GET /v1/suites/default/results`` every 50 ms
and notes when each result id first appears; a result's freshness is that moment minus its
``stop`` time (the end of its teardown, as the plugin recorded it; same machine, same clock).
The polling interval adds up to 50 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from collector_server.store import encode_cursor

POLL = 0.05
NO_OTHERS = ("-p", "no:buildkite-test-collector")


class Watcher(threading.Thread):
    """Follows the results of a suite through the read API, noting when each appears."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[str, tuple[float, float]] = {}  # id -> (stop, first seen)
        self.stopping = threading.Event()

    def poll(self) -> None:
        for _ in range(1000):  # pages per poll, bounded
            # the store numbers results 1, 2, ... in the order it stored them (a fresh data
            # directory, no deletes): resume after the ones seen, with a cursor of that shape
            cursor = encode_cursor("results", len(self.seen)) if self.seen else None
            query = {"limit": "10000", **({"cursor": cursor} if cursor else {})}
            with urllib.request.urlopen(
                f"{self.url}/v1/suites/default/results?{urllib.parse.urlencode(query)}", timeout=10
            ) as answer:
                page = json.loads(answer.read())
            now = time.time()
            for item in page["items"]:
                self.seen.setdefault(item["id"], (float(item["stop"]), now))
            if page["next_cursor"] is None:
                return

    def run(self) -> None:
        while not self.stopping.is_set():
            self.poll()
            self.stopping.wait(POLL)
        self.poll()


def measure(tests: int, sleep: float, runs: int) -> str:
    with harness.workdir("fresh") as tmp, harness.Collector(tmp / "collector") as collector:
        suite = tmp / "suite"
        count = harness.write_suite(suite, tests, files=20, sleep=sleep)
        watcher = Watcher(collector.url)
        watcher.start()
        env = harness.bench_env(TESTENGINE_URL=collector.url)
        cmd = harness.pytest_cmd(*NO_OTHERS, "--testengine")
        for index in range(runs):
            got = harness.run_measured(cmd, cwd=suite, env=env)
            harness.log(f"run {index + 1}/{runs}: {got.wall:.1f} s")
        deadline = time.monotonic() + 30
        while len(watcher.seen) < count * runs and time.monotonic() < deadline:
            time.sleep(POLL)
        watcher.stopping.set()
        watcher.join(30)
    lags = [seen - stop for stop, seen in watcher.seen.values()]
    p = harness.percentile
    row = (
        f"{count:,} x {runs}",
        f"{sleep * 1000:g} ms",
        f"{len(lags):,}",
        f"{p(lags, 50):.2f} s",
        f"{p(lags, 95):.2f} s",
        f"{max(lags):.2f} s",
    )
    title = (
        "### End-to-end freshness: test finished to result readable in the read API "
        "(default settings)\n\n"
    )
    return title + harness.table(
        ["tests x runs", "per test", "results seen", "p50", "p95", "max"], [row], "rrrrrr"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--runs", type=int, default=None, help="pytest runs")
    args = parser.parse_args(argv)
    if args.quick:
        print(measure(100, 0.002, args.runs or 1))
    else:
        print(measure(1500, 0.004, args.runs or 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
