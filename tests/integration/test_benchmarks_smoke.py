"""``benchmarks/run.py --quick`` runs every benchmark end to end and prints its tables.

Only that the benchmarks work is checked, never a timing (figures of a quick run mean
nothing).  The Kafka benchmark, which starts a broker of its own, is left out here: the Kafka
tests cover that machinery.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300.0  # seconds; a quick run takes under a minute on a 2-core machine

#: Each benchmark's table header, as the quick run prints it.
TABLES = {
    "plugin_overhead": (
        "| candidate | wall time | overhead vs plain | 95% interval of the overhead | µs per test |"
    ),
    "plugin_parts": "| part | plain pytest | --testengine (null sink) | --testengine-output file |",
    "plugin_memory": "| tests | plain pytest | --testengine | difference |",
    "end_of_run": "| candidate | last test to exit | beyond plain pytest |",
    "collector_ingest": "| clients | collector | accepted results/s |",
    "processor_throughput": "| path | results/s |",
    "sustained_load": "| offered results/s | accepted results/s | lag, highest |",
    "freshness": "| tests x runs | per test | results seen | p50 | p95 | max |",
}
ROWS = {
    "plugin_overhead": [
        "plain pytest",
        "--testengine (collector)",
        "--testengine (null sink)",
        "--testengine-output file",
        "--junitxml",
        "pytest-reportlog",
        "buildkite-test-collector",
    ],
    "plugin_parts": [
        "the recording hook, all its calls",
        "cyclic garbage collector, whole session",
        "full collections, each run",
    ],
    "end_of_run": [
        "--testengine, healthy collector",
        "--testengine, unreachable (refused)",
        "--testengine, hung (never answers)",
    ],
}


def section(output: str, name: str) -> str:
    found = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", output, re.S | re.M)
    assert found, f"no section {name!r} in:\n{output[-3000:]}"
    return found.group(1)


def test_quick_run_prints_every_table() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--skip", "kafka_ingest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed" not in done.stdout
    assert done.stdout.startswith("# Benchmarks (quick")
    assert "\nMachine: " in done.stdout
    for name, header in TABLES.items():
        text = section(done.stdout, name)
        assert header in text, f"{name}: no table\n{text}"
        rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
        assert rows, f"{name}: empty table\n{text}"
        for label in ROWS.get(name, []):  # measured, or "not installed" where it is not
            assert any(row.startswith(f"| {label} |") for row in rows), f"{name}: no {label}"
    # the -n 2 comparison is there too
    assert "pytest-xdist -n 2" in section(done.stdout, "plugin_overhead")


def test_unknown_benchmark_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown benchmark 'nope': expected one of plugin_overhead" in done.stderr
