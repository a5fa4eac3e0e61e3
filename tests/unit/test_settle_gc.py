"""The garbage collector settings of the collector's processes."""

from __future__ import annotations

import subprocess
import sys

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


def test_processes_that_apply_results_settle_their_collector() -> None:
    import inspect

    from collector_server import __main__ as cli
    from collector_server import consumer_child, processor_child

    for function in (processor_child.run_child, consumer_child.run_child, cli.process, cli._serve):
        assert "settle_gc()" in inspect.getsource(function), function.__qualname__
