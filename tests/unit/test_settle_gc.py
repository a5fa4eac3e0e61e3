"""The garbage collector settings of the collector's processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector_server.processor import GC_THRESHOLDS

CHECK = """
import gc
from collector_server.processor import settle_gc
from collector_server import processor_child, consumer_child  # the processes that call it
assert gc.get_freeze_count() == 0
settle_gc()
print(gc.get_threshold(), gc.get_freeze_count() > 1000)
"""


def test_settle_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    # in a process of its own: the settings are global to the interpreter
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == f"{GC_THRESHOLDS} True"


CHILD = """
import gc, sys
from pathlib import Path
from collector_server import processor_child
from collector_server.processor import LocalProcessor

def start(self):  # the collector is set by the time the processor starts
    print(gc.get_threshold(), gc.get_freeze_count() > 1000, flush=True)
    sys.exit(0)

LocalProcessor.start = start
tmp = Path(sys.argv[1])
processor_child.run_child(tmp / "log.db", tmp / "store.db", 5000, 0.05)
"""


def test_the_processor_process_runs_with_its_collector_settled(tmp_path: Path) -> None:
    # the default processor: a child process started with the collector's log and store
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.strip() == f"{GC_THRESHOLDS} True"


def test_other_processes_that_apply_results_settle_their_collector() -> None:
    # process and the Kafka consumer child need a broker to start; that they call it is
    # checked in their source (the function itself is tested above; serve is shown by
    # running it, through its metrics, in tests/integration/test_collector_process.py)
    import inspect

    from collector_server import __main__ as cli
    from collector_server import consumer_child

    for function in (consumer_child.run_child, cli.process):
        assert "settle_gc()" in inspect.getsource(function), function.__qualname__
