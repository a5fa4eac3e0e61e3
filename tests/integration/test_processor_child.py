"""The embedded processor's child process: it follows the collector, in life and in death."""

from __future__ import annotations

import os
import signal
import time

from collector_server.store.sqlite import STORE_FILE, SqliteStore
from tests.collector.batches import batch
from tests.support.collector import CollectorProcess

EXIT_TIMEOUT = 15.0  # seconds for an orphaned processor to notice and exit


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose (its parent was killed; init reaps it)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)  # polling a condition with a deadline
    return not alive(pid)


def processor_pid(collector: CollectorProcess) -> int:
    body = collector.get("/readyz").json()
    assert body["processor"]["running"] is True, body
    pid = body["processor"]["pid"]
    assert isinstance(pid, int)
    assert pid != collector.proc.pid if collector.proc else True
    return pid


def test_processor_runs_in_its_own_process_and_exits_with_a_killed_collector(
    collector: CollectorProcess,
) -> None:
    pid = processor_pid(collector)
    assert alive(pid)
    assert collector.post_batch(batch(10, suite="child")).status_code == 202
    collector.wait_for_results(10, suite="child")
    collector.kill()  # kill -9: the child sees its stdin close and exits
    assert wait_gone(pid, EXIT_TIMEOUT), f"processor {pid} outlived its collector"
    collector.start()  # the next collector starts its own processor and reads the same store
    assert len(collector.results("child")) == 10
    assert processor_pid(collector) != pid


def test_a_killed_processor_is_started_again_and_catches_up(
    collector: CollectorProcess,
) -> None:
    pid = processor_pid(collector)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, EXIT_TIMEOUT)
    # accepted meanwhile: durable in the log, applied by the next processor process
    assert collector.post_batch(batch(8, suite="again")).status_code == 202
    stored = collector.wait_for_results(8, suite="again", timeout=30.0)
    assert len(stored) == 8
    ready = collector.get("/readyz").json()
    assert ready["processor"]["restarts"] == 1
    assert ready["processor"]["pid"] != pid
    assert "processor process exited with status -9; restarting it" in collector.output()


def test_graceful_stop_stops_the_processor(collector: CollectorProcess) -> None:
    pid = processor_pid(collector)
    assert collector.post_batch(batch(5, suite="stop")).status_code == 202
    collector.stop()
    assert wait_gone(pid, EXIT_TIMEOUT)
    collector.start()
    assert len(collector.wait_for_results(5, suite="stop")) == 5


def test_ctrl_c_of_the_process_group_drains_and_stops_both_processes(
    collector: CollectorProcess,
) -> None:
    """A terminal's Ctrl-C reaches the collector and its processor child alike: the child
    ignores it and is stopped (drained) by the collector, not left hanging until a kill."""
    pid = processor_pid(collector)
    assert collector.post_batch(batch(5, suite="ctrl-c")).status_code == 202
    proc = collector.proc
    assert proc is not None
    os.kill(pid, signal.SIGINT)  # the child first, as a group signal may arrive
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(EXIT_TIMEOUT) in (0, -signal.SIGINT, 130)
    assert wait_gone(pid, EXIT_TIMEOUT), f"processor {pid} still runs after Ctrl-C"
    collector.proc = None
    store = SqliteStore(collector.data_dir / STORE_FILE).open()
    try:  # drained before it stopped: everything accepted is in the store
        assert len(store.results("default", "ctrl-c", limit=100).items) == 5
    finally:
        store.close()
