"""A rejected request body is let go of once its answer is sent.

The collector's processes run the garbage collector seldom (``settle_gc``): what a reference
cycle holds stays until a collection, which may be thousands of requests later.  A large body
is decoded in a worker thread, and an error raised there comes back through a future that
its traceback refers to: a cycle holding the body, its gunzipped bytes and what was parsed.
So does a valid body the local log could not take (503), through the future of its write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, gc, sqlite3, tempfile, tracemalloc
from pathlib import Path

import httpx

from collector_server.app import create_app
from collector_server.processor import settle_gc
from collector_server.settings import CollectorSettings
from collector_server.sinks.local import LOG_FILE
from tests.collector.batches import GZIP_JSON, JSON, batch, body, encode, gzip_bomb

LIMIT = 8 << 20  # gunzipped bytes a request may have


async def main() -> None:
    settings = CollectorSettings(data_dir=Path(tempfile.mkdtemp()), max_decompressed_bytes=LIMIT)
    app = create_app(settings)
    bomb = gzip_bomb(300 << 20)  # about 300 KB: decoded in a worker thread
    not_json = b"[" + b" " * (1 << 20)
    valid = encode(body(batch(2000, message="m" * 400)))  # about 1.3 MB
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://collector.test") as c:
            settle_gc()  # as serve does once started
            gc.disable()  # no collection at all: what is not freed at once stays
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            codes = []
            for _ in range(4):
                for content, headers in ((bomb, GZIP_JSON), (not_json, JSON)):
                    response = await c.post("/v1/results", content=content, headers=headers)
                    codes.append(response.status_code)
            log = sqlite3.connect(settings.data_dir / LOG_FILE)  # the log cannot be written
            log.execute(
                "CREATE TRIGGER full BEFORE INSERT ON log"
                " BEGIN SELECT RAISE(FAIL, 'disk full'); END"
            )
            log.commit()
            log.close()
            for _ in range(4):
                response = await c.post("/v1/results", content=valid, headers=JSON)
                codes.append(response.status_code)
            held = tracemalloc.get_traced_memory()[0] - before
            print(*sorted(set(codes)), held >> 20)


asyncio.run(main())
"""


def test_rejected_large_bodies_are_freed_without_a_garbage_collection() -> None:
    # in a process of its own: the garbage collector's settings are global
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    ).stdout
    *codes, held_mib = out.split()
    assert codes == ["400", "413", "503"]
    # each bomb holds 8 MiB once gunzipped, each other body about 1 MiB: 40 MiB and more if
    # they were kept
    assert int(held_mib) < 8, out
