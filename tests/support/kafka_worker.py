"""A processor in its own process, for tests that SIGKILL it.

    python -m tests.support.kafka_worker BOOTSTRAP TOPIC GROUP OUT_FILE [--batch N] [--pause S]

Stores result ids as lines of OUT_FILE (every write, duplicates included), exits cleanly on
SIGTERM.  ``--pause`` slows each store write down, like a busy database, so a test can kill the
process in the middle of the stream.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from collector_server.consumer import run_consumer
from pytest_testengine.model import Record


class FileStore:
    def __init__(self, path: Path, pause: float) -> None:
        self.path = path
        self.pause = pause

    def write(self, records: Sequence[Record], *, offsets: Mapping[str, int] | None = None) -> int:
        time.sleep(self.pause)  # a slow database
        with open(self.path, "a") as out:
            out.write("".join(f"{r.result.id}\n" for r in records))
            out.flush()
            os.fsync(out.fileno())
        return len(records)

    def offsets(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_consumer(
        args.bootstrap,
        args.topic,
        args.group,
        FileStore(args.out, args.pause),
        stop_event=stop,
        batch_size=args.batch,
        poll_timeout=0.2,
        consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
