"""``testengine-collector``: run the collector and manage its tokens.

::

    testengine-collector serve [--host 127.0.0.1] [--port 8765] [--data-dir DIR] [...]
    testengine-collector process --kafka-bootstrap HOST:PORT [--data-dir DIR] [...]
    testengine-collector tokens create --tenant NAME [--data-dir DIR]
    testengine-collector tokens list [--data-dir DIR]

Every ``serve`` option also reads ``TESTENGINE_COLLECTOR_<NAME>`` from the environment
(see ``serve --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, NoReturn

from collector_server.auth import TokenStore
from collector_server.errors import CollectorError
from collector_server.settings import (
    PROCESS_SETTINGS,
    CollectorSettings,
    add_arguments,
    env_of,
    python_level,
    resolve,
)

LOCK_FILE = "collector.lock"
STARTUP_POLL = 0.02  # seconds between checks that the server has bound its socket


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"[testengine] {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="testengine-collector", description="The pytest-testengine collector."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the collector (HTTP ingest and query API)")
    add_arguments(serve)
    process = commands.add_parser(
        "process",
        help="run a processor: a Kafka consumer group member writing results to the store",
    )
    add_arguments(process, PROCESS_SETTINGS)
    tokens = commands.add_parser("tokens", help="manage tenant tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="create a token for a tenant and print it (shown once)"
    )
    create.add_argument("--tenant", required=True, help="tenant the token belongs to")
    create.add_argument(
        "--data-dir", default=None, help=f"collector data directory (env {env_of('data_dir')})"
    )
    listing = token_commands.add_parser("list", help="list tenants and token hints")
    listing.add_argument(
        "--data-dir", default=None, help=f"collector data directory (env {env_of('data_dir')})"
    )
    return parser


def _data_dir(given: str | None, environ: Mapping[str, str]) -> Path:
    return Path(given or environ.get(env_of("data_dir")) or CollectorSettings().data_dir)


def refuse_open_bind(settings: CollectorSettings) -> str | None:
    """The message to exit with when the settings would expose an open collector, else None."""
    if settings.is_loopback or TokenStore(settings.data_dir).load():
        return None
    return (
        f"[testengine] refusing to listen on {settings.host} without tokens: anyone who can "
        "reach it could read and write results. Create a token first with "
        f"`testengine-collector tokens create --tenant NAME --data-dir {settings.data_dir}` "
        "and give it to clients as TESTENGINE_TOKEN, or listen on 127.0.0.1"
    )


def check_data_dir(data_dir: Path) -> str | None:
    """Create the data directory; the message to exit with when it is not usable, else None."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return (
            f"[testengine] cannot create the data directory {data_dir}: {exc.strerror}; "
            "expected a writable directory: pass another one with --data-dir"
        )
    if not os.access(data_dir, os.W_OK | os.X_OK):
        return (
            f"[testengine] the data directory {data_dir} is not writable; expected a writable "
            "directory: fix its permissions or pass another one with --data-dir"
        )
    return None


def lock_data_dir(data_dir: Path) -> IO[str] | str:
    """Hold ``collector.lock`` in the data directory for the life of the process (released
    by the OS even on kill -9); the message to exit with when another collector holds it."""
    handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        return (
            f"[testengine] another collector (pid {holder}) is using the data directory "
            f"{data_dir}; expected one collector per data directory: stop it or pass another "
            "--data-dir"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(settings: CollectorSettings) -> int:
    import uvicorn

    from collector_server.app import create_app
    from collector_server.processor import settle_gc

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.wait({task}, timeout=STARTUP_POLL)
    if server.started:
        settle_gc()
        port = settings.port
        for listener in server.servers:
            for sock in listener.sockets:
                port = sock.getsockname()[1]
        print(
            f"[testengine] collector listening on {url_of(settings.host, port)} "
            f"(data in {settings.data_dir})",
            flush=True,
        )
    await task
    return 0 if server.started else 1


def serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = resolve(vars(args), environ)
    refusal = refuse_open_bind(settings) or check_data_dir(settings.data_dir)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    lock = lock_data_dir(settings.data_dir)
    if isinstance(lock, str):
        print(lock, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(_serve(settings))
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        return int(exc.code or 1)
    except KeyboardInterrupt:
        return 130
    finally:
        lock.close()


def process(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Consume the results topic into the store in the data directory until SIGTERM/SIGINT."""
    from collector_server.consumer import ConsumerError, processor_consumer
    from collector_server.processor import settle_gc
    from collector_server.store.sqlite import STORE_FILE, SqliteStore

    settings = resolve(vars(args), environ)
    if not settings.kafka_bootstrap:
        print(
            "[testengine] `process` needs a Kafka broker: pass --kafka-bootstrap HOST:PORT or "
            "set TESTENGINE_KAFKA_BOOTSTRAP (see docs/kafka.md)",
            file=sys.stderr,
        )
        return 2
    refusal = check_data_dir(settings.data_dir)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=python_level(settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    store = SqliteStore(settings.data_dir / STORE_FILE).open()
    consumer = processor_consumer(settings, store)
    try:
        consumer.start()
        print(
            f"[testengine] processor consuming {settings.kafka_topic} from "
            f"{settings.kafka_bootstrap} in group {settings.kafka_group} (store in "
            f"{settings.data_dir})",
            flush=True,
        )
        settle_gc()
        consumer.run(stop)
    except ConsumerError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        consumer.close()  # commits what is stored, leaves the group
        store.close()
    print(f"[testengine] processor stopped: {consumer.stats.summary()}", flush=True)
    return 0


def tokens(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    store = TokenStore(_data_dir(args.data_dir, environ))
    if args.tokens_command == "create":
        token = store.create(args.tenant)
        print(token, flush=True)
        print(
            f"[testengine] created a token for tenant {args.tenant!r} (stored hashed in "
            f"{store.path}); it is shown only this once: give it to clients as TESTENGINE_TOKEN",
            file=sys.stderr,
        )
        return 0
    for entry in store.load():
        created = datetime.datetime.fromtimestamp(entry.created, datetime.timezone.utc)
        print(f"{entry.tenant}\t{entry.hint}...\t{created:%Y-%m-%dT%H:%M:%SZ}")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "serve":
            return serve(args, env)
        if args.command == "process":
            return process(args, env)
        return tokens(args, env)
    except CollectorError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
