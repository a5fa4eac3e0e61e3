"""The garbage collector settings of the collector's processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


#: Run one of the collector's processes with the loop that applies results replaced by a
#: probe that prints the garbage collector's settings at that moment and stops.
PROBE = """
import gc, sys
from pathlib import Path
from collector_server.consumer import ResultConsumer
from collector_server.processor import LocalProcessor

def probe(self, *args, **kwargs):  # where results would start to be applied
    print(gc.get_threshold(), gc.get_freeze_count() > 1000, flush=True)
    sys.exit(0)

LocalProcessor.start = probe  # the embedded processor's thread
ResultConsumer.start = lambda self: None  # no broker: the group is never joined
ResultConsumer.run = probe  # the Kafka processor's loop
tmp = Path(sys.argv[1])
{start}
"""

STARTS = {
    # serve's default processor, a child process with the collector's log and store
    "processor-child": (
        "from collector_server import processor_child\n"
        "processor_child.run_child(tmp / 'log.db', tmp / 'store.db', 5000, 0.05)"
    ),
    # serve's processor in Kafka mode, a child process
    "kafka-child": (
        "from collector_server import consumer_child\n"
        "from collector_server.settings import CollectorSettings\n"
        "consumer_child.run_child(CollectorSettings(data_dir=tmp, kafka_bootstrap='127.0.0.1:9'))"
    ),
    # testengine-collector process
    "process": (
        "from collector_server.__main__ import main\n"
        "main(['process', '--kafka-bootstrap', '127.0.0.1:9', '--data-dir', str(tmp)])"
    ),
}


@pytest.mark.parametrize("name", list(STARTS))
def test_each_process_applying_results_runs_with_its_collector_settled(
    name: str, tmp_path: Path
) -> None:
    # serve's own process is shown through its metrics (tests/integration/
    # test_collector_process.py); these are shown by running them up to their loop
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(start=STARTS[name]), str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    probed = [line for line in out.stdout.splitlines() if line.startswith("(")]  # not status
    assert probed == [f"{GC_THRESHOLDS} True"], out.stderr[-2000:]
