"""A collector's Kafka sink in its own process, for tests that SIGKILL it.

    python -m tests.support.sink_worker BOOTSTRAP TOPIC WAL_DIR

Publishes batches of 20 sample records until killed and prints the result ids of every batch
``publish`` returned for (the ones a collector would have answered 202), one id per line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from collector_server.sinks.kafka import KafkaSink
from tests.support.kafka_io import sample_records

MAX_BATCHES = 10_000


async def main(bootstrap: str, topic: str, wal_dir: Path) -> None:
    sink = KafkaSink(bootstrap, wal_dir, topic=topic, partitions=2, delivery_timeout=1.0)
    await sink.start()
    try:
        for _ in range(MAX_BATCHES):
            batch = sample_records(20)
            await sink.publish(batch)
            sys.stdout.write("".join(f"{r.result.id}\n" for r in batch))
            sys.stdout.flush()
    finally:
        await sink.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
