"""Shared benchmark code: alternating runs, statistics, generated suites, a collector process.

Every comparison runs its candidates alternately in one run (A B C A B C ...), after one
warm-up round that is not counted, so that a change of load on a shared machine hits every
candidate alike; the figures are the median and the min-max spread of each candidate and of
its ratio to the baseline (computed per round, so one slow round does not skew it).
"""

from __future__ import annotations

import contextlib
import http.server
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: every collector and server here is stopped


signal.signal(signal.SIGTERM, _exit_on_sigterm)
READY_TIMEOUT = 30.0  # seconds for a collector to answer /readyz
STOP_TIMEOUT = 15.0


# -- statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, unit: str = "", digits: int = 2, scale: float = 1.0) -> str:
        m, lo, hi = self.median * scale, self.low * scale, self.high * scale
        return f"{m:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """A confidence interval for the median of the distribution ``values`` come from, at
    least ``level`` (distribution-free: between two order statistics, whose coverage follows
    the binomial distribution with p = 1/2).  None: too few values for ``level``."""
    ordered = sorted(values)
    n = len(ordered)
    below = 0.0  # P(Binomial(n, 1/2) <= j - 1)
    best = None
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2**n
        if 1 - 2 * below < level:
            break
        best = (ordered[j - 1], ordered[n - j])
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Alternated:
    """Measurements of candidates run alternately: ``values[name][round]``."""

    names: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)

    def spread(self, name: str) -> Spread:
        return Spread.of(self.values[name])

    def ratios(self, name: str, base: str) -> list[float]:
        """``name`` / ``base``, round by round."""
        pairs = zip(self.values[name], self.values[base], strict=True)
        return [a / b for a, b in pairs]

    def ratio(self, name: str, base: str) -> Spread:
        return Spread.of(self.ratios(name, base))


def alternate(
    candidates: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Alternated:
    """Run each candidate once per round, ``warmup + rounds`` times; keep the measurements
    (the callables return them) of the last ``rounds`` rounds.

    Every other round runs the candidates in reverse order (A B C, C B A, A B C, ...): a
    candidate is not always the one that runs right after another (a collector still busy
    with the previous run's results, a warm or cold cache), and a slow drift of the machine
    weighs on every candidate alike over two rounds."""
    out = Alternated(list(candidates), {name: [] for name in candidates})
    order = list(candidates.items())
    for index in range(warmup + rounds):
        for name, run in order if index % 2 == 0 else order[::-1]:
            value = run()
            if index >= warmup:
                out.values[name].append(value)
            if progress is not None:
                tag = "warm-up" if index < warmup else f"round {index - warmup + 1}/{rounds}"
                progress(f"{tag} {name}: {value:.3f}")
    return out


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- tables ------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column (l or r, default r but the
    first)."""
    aligns = align or "l" + "r" * (len(headers) - 1)
    marks = [":---" if a == "l" else "---:" for a in aligns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {ram} RAM, Python {platform.python_version()}, "
        f"load average {load()}"
    )


# -- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, from spawn to reaped
    max_rss_kib: int  # peak resident set of the child (Linux: KiB)
    status: int
    ended: float  # time.time() when the child was reaped
    cpu: float = 0.0  # user + system seconds of the child itself


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 1200.0,
) -> Run:
    """Run ``cmd`` (output discarded); wall time and the child's own peak RSS (wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    wall = time.perf_counter() - start
    ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
    cpu = usage.ru_utime + usage.ru_stime
    return Run(wall, int(usage.ru_maxrss), proc.returncode, ended, cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of measured pytest runs: nothing from the caller's TESTENGINE_*,
    BUILDKITE_* or CI settings."""
    drop = ("TESTENGINE_", "BUILDKITE", "PYTEST_", "CI", "GITHUB_", "GITLAB_", "CIRCLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"testengine-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- generated suites --------------------------------------------------------------------


def write_suite(
    root: Path, tests: int, files: int = 200, *, sleep: float = 0.0, failing: bool = True
) -> int:
    """Write a suite of about ``tests`` trivial tests in ``files`` files: half plain
    functions, half one parametrized function per file; 1% of all tests failing (unless not
    ``failing``) and 2% skipped, spread over the files (counted across the suite, so a suite
    of any size has them).  Returns the exact number of tests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    per_file = max(1, tests // files)
    body = f"time.sleep({sleep!r})\n    " if sleep else ""
    total = 0
    functions = 0  # plain functions so far: 2% of them fail, 4% are skipped
    for f in range(files):
        n = per_file if f < files - 1 else tests - per_file * (files - 1)
        if n <= 0:
            break
        lines = ["import time", "import pytest", ""]
        plain = n // 2
        param = n - plain
        for i in range(plain):
            k, functions = functions, functions + 1
            if failing and k % 50 == 18:
                lines.append(f"def test_fail_{i}():\n    {body}assert {i} == {i + 1}\n")
            elif k % 25 == 11:
                lines.append(
                    f"@pytest.mark.skip(reason='not here')\ndef test_skip_{i}():\n    pass\n"
                )
            else:
                lines.append(f"def test_plain_{i}():\n    {body}assert {i} == {i}\n")
        if param:
            lines.append(
                f"@pytest.mark.parametrize('x', range({param}))\n"
                f"def test_param(x):\n    {body}assert x >= 0\n"
            )
        (root / f"test_gen_{f:03d}.py").write_text("\n".join(lines))
        total += n
    return total


PYTEST_BASE = (
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:randomly",
    "-o",
    "console_output_style=classic",
)


def compile_packages() -> None:
    """Compile the bytecode of this project's packages, as installing a wheel does: measured
    runs may not write it (``PYTHONDONTWRITEBYTECODE=1``), so from a source checkout (an
    editable install) a module changed since its last import would be compiled again in
    every run, a cost no installed plugin has."""
    import compileall

    for package in ("pytest_testengine", "collector_server"):
        compileall.compile_dir(str(ROOT / package), quiet=1)


def pytest_cmd(*args: str) -> list[str]:
    """``python -m pytest`` with the flags every candidate shares."""
    return [sys.executable, "-m", "pytest", *PYTEST_BASE, *args]


# -- a collector process -----------------------------------------------------------------


class Collector:
    """``testengine-collector serve`` on a free loopback port with a temporary data dir."""

    def __init__(self, data_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Collector:
        env = bench_env(PYTHONUNBUFFERED="1", **self.env)
        logfile = open(self.data_dir.with_name(self.data_dir.name + ".log"), "ab")  # noqa: SIM115
        with logfile:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "collector_server",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "warning",
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"collector at {self.url} not ready after {READY_TIMEOUT} s")

    def get_json(self, path: str) -> object:
        import json

        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def status(self) -> dict[str, object]:
        """The /readyz body (processor offset and lag)."""
        import json
        import urllib.error

        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=10) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        value = json.loads(body)
        assert isinstance(value, dict)
        return value

    def processor_lag(self) -> int:
        """Log entries written but not applied yet (``/readyz``)."""
        processor = self.status().get("processor")
        if not isinstance(processor, dict) or not isinstance(processor.get("lag"), int):
            raise RuntimeError(f"no processor lag in /readyz: {processor!r}")
        return int(processor["lag"])

    def wait_caught_up(self, timeout: float) -> float:
        """Seconds until the processor has applied every log entry."""
        start = time.perf_counter()
        while self.processor_lag() != 0:
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"processor still behind after {timeout} s")
            time.sleep(0.02)
        return time.perf_counter() - start

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a loopback upload sink for other tools ---------------------------------------------


class UploadSink:
    """A loopback HTTP server that accepts every POST (the Buildkite Test Engine upload API
    stand-in): answers 202 with a small JSON body and counts the uploads."""

    def __init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                sink.uploads += 1
                body = b'{"id":"bench","run_id":"bench","queued":1,"skipped":0,"errors":[]}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.uploads = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> UploadSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


class Silent:
    """A loopback socket that accepts connections and never answers (a hung collector)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
