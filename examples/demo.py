"""Demo: start the embedded collector, run the example suite, show what the collector recorded.

    python examples/demo.py            # uses a throwaway data directory
    python examples/demo.py --keep     # keeps the collector's data directory and prints it

Exits non-zero if the collector did not record exactly the tests pytest ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SUITE = HERE / "suite"
SUITE_NAME = "demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited early with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the collector at {url} was not ready within {timeout:.0f} s")


def fetch_all(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = client.get(path, params=params).raise_for_status().json()
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the collector's data directory")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="testengine-demo-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir / "collector.log").open("wb")
    print(f"==> starting the embedded collector on {url} (data in {data_dir})", flush=True)
    collector = subprocess.Popen(
        [
            *(sys.executable, "-m", "collector_server", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--data-dir", str(data_dir)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(url, collector)
        print(f"==> pytest --testengine on {SUITE.relative_to(HERE.parent)}", flush=True)
        env = {
            **os.environ,
            "TESTENGINE_URL": url,
            "TESTENGINE_SUITE": SUITE_NAME,
            "TESTENGINE_TAGS": "example=demo",
        }
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "--testengine", "-p", "no:cacheprovider", "-rA"],
            cwd=SUITE,
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        print(run.stdout.strip().splitlines()[-1])
        for line in run.stdout.splitlines():
            if line.startswith("[testengine]"):
                print(line)
        if run.returncode != 0:
            print(run.stdout, run.stderr, sep="\n")
            return run.returncode
        ran = sum(1 for line in run.stdout.splitlines() if line.split(" ")[0] in _OUTCOME_WORDS)

        with httpx.Client(base_url=url, timeout=10.0) as client:
            tests: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                tests = fetch_all(client, f"/v1/suites/{SUITE_NAME}/tests")
                if len(tests) >= ran:
                    break
                time.sleep(0.1)
            runs = fetch_all(client, f"/v1/suites/{SUITE_NAME}/runs")

        print(f"\n==> the collector recorded {len(tests)} tests in suite '{SUITE_NAME}':")
        width = max((len(t["nodeid"]) for t in tests), default=10)
        print(f"  {'test':<{width}}  {'last outcome':<12}  {'median s':>8}")
        for test in sorted(tests, key=lambda t: str(t["nodeid"])):
            median = test.get("median_duration")
            median_text = f"{median:8.3f}" if isinstance(median, (int, float)) else f"{'-':>8}"
            print(
                f"  {test['nodeid']:<{width}}  {test.get('last_outcome', '?'):<12}  {median_text}"
            )
        for r in runs:
            print(f"\n==> run {r['run_id']}: {r.get('outcomes')}")
        if len(tests) != ran:
            print(f"\nMISMATCH: pytest ran {ran} tests, the collector recorded {len(tests)}")
            return 1
        print(f"\nOK: pytest ran {ran} tests and the collector recorded every one of them.")
        return 0
    finally:
        collector.terminate()
        try:
            collector.wait(timeout=10)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait(timeout=10)
        log.close()
        if args.keep:
            print(f"collector data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


_OUTCOME_WORDS = {"PASSED", "FAILED", "SKIPPED", "XFAIL", "XPASS", "ERROR"}

if __name__ == "__main__":
    raise SystemExit(main())
