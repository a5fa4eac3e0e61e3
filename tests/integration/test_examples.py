"""examples/ runs as a smoke test: the demo a new user runs first must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_records_every_test_of_the_example_suite() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: pytest ran 17 tests and the collector recorded every one of them." in proc.stdout
    assert "[testengine] sent 17 results to http://127.0.0.1:" in proc.stdout
    assert "tests/test_arithmetic.py::test_slow_sum" in proc.stdout
