"""Fixtures: a real collector process (``python -m collector_server serve``) on a free port.

``collector`` is one running collector with a fresh data directory; ``collector_factory``
starts more (or with options).  Every process started here is stopped at teardown.

::

    def test_x(collector):
        collector.post_batch(batch)                      # httpx.Response
        collector.wait_for_results(3, suite="default")   # raw results once 3 are stored
        collector.kill(); collector.start()              # same port, same data dir

    def test_y(collector_factory):
        c = collector_factory(tokens=["acme"])           # c.tokens["acme"] is the token
        c2 = collector_factory(env={"TESTENGINE_COLLECTOR_MAX_TAGS": "2"})
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_testengine.model import Batch, encode_batch

READY_TIMEOUT = 30.0  # seconds for a collector to answer /readyz
STOP_TIMEOUT = 15.0  # seconds for a graceful stop before SIGKILL
POLL = 0.02  # seconds between checks of a condition


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def collector_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a collector process: no TESTENGINE_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTENGINE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class CollectorProcess:
    """A collector subprocess on 127.0.0.1; ``start()`` again reuses its port and data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.env = dict(env or {})
        self.args = list(args)
        self.log_path = log_path or data_dir.with_name(data_dir.name + ".log")
        self.url = f"http://{host}:{self.port}"
        self.tokens: dict[str, str] = {}
        self.token: str | None = None  # used by the helpers below when no token is passed
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "collector_server",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    def start(self, timeout: float = READY_TIMEOUT) -> CollectorProcess:
        assert not self.running, "collector already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=collector_env(self.env),
                cwd=self.data_dir.parent,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"collector exited with status {proc.returncode} before it was ready:\n"
                        + self.output()[-4000:]
                    )
                try:
                    response = client.get(self.url + "/readyz")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(POLL)  # returns at once if the process dies
        self.kill()
        raise RuntimeError(
            f"collector at {self.url} not ready after {timeout} s ({last}):\n"
            + self.output()[-4000:]
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop gracefully (SIGTERM), SIGKILL after ``timeout``; return the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def create_token(self, tenant: str) -> str:
        """Run ``tokens create`` for this data dir (works while the collector runs)."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "collector_server",
                "tokens",
                "create",
                "--tenant",
                tenant,
                "--data-dir",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            env=collector_env(),
            timeout=60,
            check=True,
        )
        token = done.stdout.strip()
        self.tokens[tenant] = token
        return token

    # -- HTTP helpers ----------------------------------------------------------------------

    def headers(self, token: str | None = None) -> dict[str, str]:
        token = token or self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str, *, token: str | None = None, **params: Any) -> httpx.Response:
        with httpx.Client(timeout=30.0) as client:
            return client.get(self.url + path, params=params, headers=self.headers(token))

    def post_batch(
        self, batch: Batch | bytes, *, token: str | None = None, gzipped: bool = False
    ) -> httpx.Response:
        body = batch if isinstance(batch, bytes) else encode_batch(batch)
        headers = {"Content-Type": "application/json", **self.headers(token)}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        with httpx.Client(timeout=30.0) as client:
            return client.post(self.url + "/v1/results", content=body, headers=headers)

    def items(self, path: str, *, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list (follows next_cursor, 10,000 per page)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100_000):
            query = {**params, "limit": 10_000, **({"cursor": cursor} if cursor else {})}
            response = self.get(path, token=token, **query)
            response.raise_for_status()
            page = response.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError(f"{path}: more pages than expected")

    def results(
        self, suite: str = "default", *, token: str | None = None, run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """All raw results of a suite stored so far (the processor may still be behind)."""
        params = {"run_id": run_id} if run_id else {}
        return self.items(f"/v1/suites/{_quote(suite)}/results", token=token, **params)

    def wait_for_results(
        self,
        n: int,
        suite: str = "default",
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """The raw results once at least ``n`` are stored; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while True:
            found = self.results(suite, token=token)
            if len(found) >= n or time.monotonic() >= deadline:
                break
            time.sleep(POLL)  # polling a condition with a deadline
        assert len(found) >= n, f"{len(found)} results in suite {suite!r} after {timeout} s"
        return found

    def tests(self, suite: str = "default", *, token: str | None = None) -> list[dict[str, Any]]:
        return self.items(f"/v1/suites/{_quote(suite)}/tests", token=token)

    def runs(self, suite: str = "default", *, token: str | None = None) -> list[dict[str, Any]]:
        return self.items(f"/v1/suites/{_quote(suite)}/runs", token=token)

    def suites(self, *, token: str | None = None) -> list[dict[str, Any]]:
        return self.items("/v1/suites", token=token)


def _quote(suite: str) -> str:
    return urllib.parse.quote(suite, safe="")


CollectorFactory = Callable[..., CollectorProcess]


@pytest.fixture
def collector_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorFactory]:
    """``factory(*, data_dir=None, port=None, env=None, args=(), tokens=(), start=True)``."""
    made: list[CollectorProcess] = []

    def factory(
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        tokens: Sequence[str] = (),
        start: bool = True,
    ) -> CollectorProcess:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("collector") / "data"
        process = CollectorProcess(data_dir, port=port, env=env, args=args)
        made.append(process)
        for tenant in tokens:
            process.create_token(tenant)
        if start:
            process.start()
        return process

    try:
        yield factory
    finally:
        for process in made:
            process.stop()


@pytest.fixture
def collector(collector_factory: CollectorFactory) -> CollectorProcess:
    """A running collector on a free loopback port with an empty data dir (open, no tokens)."""
    return collector_factory()
