"""Run every benchmark and print its markdown tables (the figures of benchmarks/README.md).

Run from the repository root (``tox -e bench`` runs this)::

    python benchmarks/run.py                  # everything, full sizes (about 15-20 minutes)
    python benchmarks/run.py --quick          # every script at tiny sizes (a smoke run)
    python benchmarks/run.py --only plugin_overhead collector_ingest
    python benchmarks/run.py --skip kafka_ingest

Each script also runs alone (``python benchmarks/<name>.py [--quick]``).  The machine, its load
average and each script's time are printed with the tables (progress and errors go to stderr);
a script that fails is named, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

signal.signal(signal.SIGTERM, harness._exit_on_sigterm)  # stop the running script first
HERE = Path(__file__).resolve().parent

#: (script, arguments of a full run); a quick run passes --quick unless QUICK_ARGS says
SCRIPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plugin_overhead", ()),
    ("plugin_parts", ()),
    ("plugin_memory", ()),
    ("end_of_run", ()),
    ("collector_ingest", ()),
    ("processor_throughput", ()),
    ("sustained_load", ()),
    ("freshness", ()),
    ("kafka_ingest", ()),
    ("plan_latency", ()),
    ("split_quality", ("--markdown",)),
)
#: Scripts without a --quick mode run with these arguments in a quick run instead.
QUICK_ARGS = {"split_quality": ("--markdown", "--seeds", "1")}
TIMEOUT = 3600.0  # seconds per script


def run_script(name: str, args: tuple[str, ...]) -> tuple[int, str, float]:
    """Run one script: its tables (stdout) are returned, its progress (stderr) goes to ours.
    Interrupted or out of time, the script gets SIGTERM so that it stops what it started."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / f"{name}.py"), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return proc.returncode, out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every script at tiny sizes")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these")
    parser.add_argument("--skip", nargs="+", default=(), metavar="NAME", help="leave these out")
    args = parser.parse_args(argv)
    known = [name for name, _ in SCRIPTS]
    for name in [*(args.only or ()), *args.skip]:
        if name not in known:
            parser.error(f"unknown benchmark {name!r}: expected one of {', '.join(known)}")
    print("# Benchmarks" + (" (quick: tiny sizes, figures mean nothing)" if args.quick else ""))
    print(f"\nMachine: {harness.machine()}\n")
    failed: list[str] = []
    for name, full_args in SCRIPTS:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        if not (HERE / f"{name}.py").exists():
            print(f"## {name}\n\n(not present in this checkout)\n")
            continue
        script_args = QUICK_ARGS.get(name, ("--quick",)) if args.quick else full_args
        print(f"## {name}\n", flush=True)
        code, out, seconds = run_script(name, script_args)
        print(out.rstrip() + "\n")
        if code != 0:
            failed.append(name)
            print(f"**{name} failed (exit status {code})**: see its error output above\n")
        print(f"_{name}: {seconds:.0f} s, load average after {harness.load()}_\n", flush=True)
    if failed:
        print(f"Failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
