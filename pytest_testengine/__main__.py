"""``testengine``: the command-line client.

``testengine upload [--spool DIR] [--url URL]`` sends the batches spooled by earlier runs and
deletes each file once the collector acknowledged it.  The token comes from
``TESTENGINE_TOKEN``; the URL and the spool directory default to ``TESTENGINE_URL`` and
``TESTENGINE_SPOOL_DIR``, then to the plugin's defaults.  Each file is retried for at most
``TESTENGINE_FLUSH_DEADLINE`` seconds, and the upload stops at the first file that cannot be
delivered because of the collector (down, or a bad token).  Running it twice is safe: the
collector stores each result id once.  Exit status 0 when the spool is empty afterwards,
1 when files are left, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pytest_testengine import __version__
from pytest_testengine.config import ConfigError, resolve
from pytest_testengine.options import URL
from pytest_testengine.sender import MonotonicClock, Policy, deliver
from pytest_testengine.spool import Spool, replay
from pytest_testengine.transport import Answer, Transport

DEFAULT_SPOOL = os.path.join(".testengine", "spool")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testengine", description="pytest-testengine client")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser(
        "upload", help="send spooled results to the collector (safe to run twice)"
    )
    upload.add_argument(
        "--spool", metavar="DIR", help=f"spool directory (default: {DEFAULT_SPOOL})"
    )
    upload.add_argument("--url", metavar="URL", help="collector URL (default: TESTENGINE_URL)")
    return parser


def upload(spool_dir: str | None, url: str | None) -> int:
    try:
        settings = resolve({}, os.environ, {})
        if url is not None:
            url = str(URL.parse(url))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError:
        print(
            f"[testengine] invalid value {url!r} for --url (command line): expected {URL.expected}",
            file=sys.stderr,
        )
        return 2
    url = url or settings.url
    spool = Spool(spool_dir or settings.spool_dir or DEFAULT_SPOOL)
    if not spool.files():
        print(f"[testengine] nothing to upload in {spool.directory}")
        return 0
    transport = Transport(
        url, token=settings.token, timeout=settings.timeout, compress=settings.compress
    )
    clock = MonotonicClock()
    policy = Policy()

    def send(body: bytes) -> Answer:
        end = clock.now() + settings.flush_deadline
        return deliver(transport, body, deadline=lambda: end, policy=policy, clock=clock)

    try:
        report = replay(spool, send)
    finally:
        transport.close()
    files = "1 file" if report.files_sent == 1 else f"{report.files_sent} files"
    line = (
        f"[testengine] uploaded {report.results_sent} results ({files}) "
        f"from {spool.directory} to {url}"
    )
    if report.files_left:
        left = "1 file" if report.files_left == 1 else f"{report.files_left} files"
        line += f"; {left} left in {spool.directory}: " + "; ".join(report.problems[:3])
    print(line)
    return 1 if report.files_left else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "upload":
        return upload(args.spool, args.url)
    return 2  # pragma: no cover (argparse requires a command)


if __name__ == "__main__":
    raise SystemExit(main())
