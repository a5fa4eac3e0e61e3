"""The Kafka processor of ``serve``: in a child process (default), so ingest and processing
use two cores, or in a thread of the collector.

:class:`ConsumerThread` runs a :class:`~collector_server.consumer.ResultConsumer` in a thread.
:class:`ConsumerChild` (in the collector) starts ``python -m collector_server.consumer_child``
and stands in for it: same ``start``, ``stop``, ``running``, ``lag`` and ``status``.  The
child is a consumer group member like ``testengine-collector process``: it writes the SQLite
store of the collector's data directory (shared through SQLite's locking) and commits offsets
after each store write.

Pipes, one line per message:

- collector -> child (stdin): ``S`` to stop (the child commits what it stored and leaves the
  group).  End of file means the collector is gone (even SIGKILLed): the child stops the same
  way, so no consumer outlives its collector.  A child that dies is started again (see
  :class:`~collector_server.child.Supervised`); it resumes from the group's committed offsets.
- child -> collector (stdout): JSON objects ``{"records": r, "new": k, "malformed": m,
  "partitions": [...], "lag": {partition: n}, "error": ...}`` (totals so far) after every
  batch and once a second; the collector turns them into ``/readyz`` and ``/metrics``.
  The child's log goes to the collector's stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Final

import orjson

from collector_server.child import ChildSide, Supervised
from collector_server.consumer import ConsumerError, ResultConsumer, processor_consumer
from collector_server.kafka_metrics import KafkaMetrics
from collector_server.processor import settle_gc
from collector_server.settings import PROCESS_SETTINGS, CollectorSettings, python_level
from collector_server.store.sqlite import STORE_FILE, SqliteStore

log = logging.getLogger("testengine.collector.consumer")

STOP_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 1.0  # seconds between status lines when nothing is consumed


class ConsumerThread:
    """A :class:`ResultConsumer` run in a daemon thread (the processor inside ``serve``).

    ``start()`` returns at once (joining the group and creating topics happen in the thread);
    ``stop()`` makes the consumer commit what it stored and leave the group.
    """

    def __init__(self, consumer: ResultConsumer) -> None:
        self.consumer = consumer
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="testengine-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.consumer.start()
            self.consumer.run(self._stop)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("[testengine] the Kafka processor stopped")
        finally:
            try:
                self.consumer.close()
            except Exception:
                log.exception("[testengine] closing the Kafka consumer failed")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def lag(self) -> int:
        return sum(self.consumer.stats.lag.values())

    def status(self) -> dict[str, object]:
        stats = self.consumer.stats
        return {
            "running": self.running,
            "kind": "kafka",
            "group": self.consumer.group,
            "partitions": list(stats.assigned),
            "lag": self.lag,
            "records": stats.records,
            "malformed": stats.malformed,
            "error": self.error,
        }


class ConsumerChild(ChildSide):
    """The collector's side of the child process (see the module docstring)."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        metrics: KafkaMetrics | None = None,
        on_applied: Callable[[int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_applied = on_applied
        self.totals: dict[str, Any] = {"records": 0, "new": 0, "malformed": 0}
        self.partitions: list[int] = []
        self.partition_lag: dict[int, int] = {}
        self._child = Supervised(
            "Kafka processor process", self.command, self._update, on_spawn=self._spawning
        )

    def command(self) -> list[str]:
        config = {
            name: getattr(self.settings, name) for name in PROCESS_SETTINGS
        }  # passed as one JSON argument
        config["data_dir"] = str(self.settings.data_dir)
        return [
            sys.executable,
            "-m",
            "collector_server.consumer_child",
            orjson.dumps(config).decode(),
        ]

    def start(self) -> None:
        self._child.start()

    def _spawning(self) -> None:
        """A new child counts from zero (what the one before reported is counted already)."""
        self.totals = dict.fromkeys(self.totals, 0)

    def _update(self, message: dict[str, Any]) -> None:
        before = self.totals
        after = {key: int(message.get(key, 0)) for key in before}
        delta = {key: after[key] - before[key] for key in before}
        self.totals = after
        self._child.error = message.get("error")
        self.partitions = [int(p) for p in message.get("partitions", ())]
        self.partition_lag = {int(p): int(n) for p, n in message.get("lag", {}).items()}
        if self.on_applied is not None and delta["records"]:
            self.on_applied(delta["records"], delta["new"])
        if self.metrics is not None:
            self.metrics.consumed.inc(delta["records"])
            self.metrics.consumed_new.inc(delta["new"])
            self.metrics.malformed.inc(delta["malformed"])
            for partition, lag in self.partition_lag.items():
                self.metrics.consumer_lag.labels(str(partition)).set(lag)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the child to commit and leave the group; kill it after ``timeout``."""
        self._child.stop(timeout)

    @property
    def running(self) -> bool:
        return self._child.alive

    @property
    def lag(self) -> int:
        return sum(self.partition_lag.values())

    def status(self) -> dict[str, object]:
        return {
            "running": self.running,
            "kind": "kafka",
            "group": self.settings.kafka_group,
            "partitions": self.partitions,
            "lag": self.lag,
            "records": self.totals["records"],
            "malformed": self.totals["malformed"],
            "error": self.error,
            "pid": self._child.pid,
            "restarts": self.restarts,
        }


# -- the child ---------------------------------------------------------------------------


class _Reporter:
    """Status lines on stdout, from the consumer loop and the heartbeat thread."""

    def __init__(self, consumer: ResultConsumer, out: IO[bytes]) -> None:
        self.consumer = consumer
        self.out = out
        self.error: str | None = None
        self.lock = threading.Lock()

    def send(self) -> None:
        stats = self.consumer.stats
        line = orjson.dumps(
            {
                "records": stats.records,
                "new": stats.new,
                "malformed": stats.malformed,
                "partitions": list(stats.assigned),
                "lag": {str(p): n for p, n in stats.lag.items()},
                "error": self.error,
            }
        )
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.out.write(line + b"\n")
            self.out.flush()


def run_child(settings: CollectorSettings) -> int:
    store = SqliteStore(settings.data_dir / STORE_FILE).open()
    consumer = processor_consumer(settings, store)
    reporter = _Reporter(consumer, sys.stdout.buffer)
    stop = threading.Event()

    def watch_stdin() -> None:  # "S" or end of file (the collector is gone): stop
        for line in sys.stdin.buffer:
            if line.startswith(b"S"):
                break
        stop.set()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT):
            reporter.send()

    # Ctrl-C in a terminal reaches the whole process group: the collector stops the child
    # (through stdin) once it has stopped taking batches; a SIGTERM of its own stops it too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=watch_stdin, name="testengine-stdin", daemon=True).start()
    threading.Thread(target=heartbeat, name="testengine-heartbeat", daemon=True).start()
    code = 0
    try:
        consumer.on_applied = lambda *_: reporter.send()
        consumer.start()
        settle_gc()
        reporter.send()
        consumer.run(stop)  # its retry pauses end as soon as stop is set
    except ConsumerError as exc:
        reporter.error = str(exc)
        log.error("%s", exc)
        code = 1
    finally:
        stop.set()
        consumer.close()  # commits what is stored, leaves the group
        store.close()
        reporter.send()
    return code


def settings_of(argument: str) -> CollectorSettings:
    """The settings :meth:`ConsumerChild.command` passed as JSON."""
    config = orjson.loads(argument)
    config["kafka_option"] = tuple((str(k), str(v)) for k, v in config["kafka_option"])
    config["data_dir"] = Path(config["data_dir"])
    return CollectorSettings().replace(**config)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = settings_of(args[0])
    logging.basicConfig(
        level=python_level(settings.log_level),
        format=f"%(asctime)s %(levelname)s %(name)s [pid {os.getpid()}] %(message)s",
    )
    return run_child(settings)


if __name__ == "__main__":
    sys.exit(main())
