#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, for development, tests and CI.

Standard library only.  The broker jars come from Maven Central through Maven (a throwaway
pom with ``org.apache.kafka:kafka_2.13`` and an slf4j binding, ``dependency:copy-dependencies``)
into a cache folder outside the repository, ``~/.cache/testengine/kafka-<version>/lib`` by
default.  The first fetch also records a class-data-sharing archive, which halves the JVM
start-up time of every later broker.

Command line::

    python scripts/kafka_broker.py fetch            # download the jars, print the lib folder
    python scripts/kafka_broker.py run              # start, print the bootstrap, stop on Ctrl-C
    python scripts/kafka_broker.py start [--data-dir D] [--port P]   # start in the background
    python scripts/kafka_broker.py stop  [--data-dir D]

As a module (the test fixtures import it by path)::

    broker = Broker(data_dir)        # stores arguments, no I/O
    broker.start()                   # fetch if needed, format storage, start, wait until it answers
    broker.bootstrap                 # "127.0.0.1:PORT"
    broker.stop(); broker.start()    # restart on the same port with the same data
    broker.kill()                    # SIGKILL

Environment: ``TESTENGINE_KAFKA_VERSION`` (default below), ``TESTENGINE_KAFKA_CACHE`` (the cache
base folder), ``TESTENGINE_KAFKA_HEAP`` (default 768m), ``TESTENGINE_KAFKA_JVM_OPTS`` (extra JVM
options, split on spaces), ``JAVA_HOME``.

Errors: ``BrokerError`` (the broker did not start or stop); ``BrokerUnavailable`` (a subclass:
Java or Maven is missing, so no broker can be started on this machine).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

DEFAULT_VERSION = "4.1.1"
SLF4J_VERSION = "2.0.17"
DEFAULT_HEAP = "768m"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"

#: Broker settings for a fast single-node test broker.  Listeners and paths are added per start.
BROKER_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    # after a SIGKILL the restarted broker may register only once its old session expired
    "broker.session.timeout.ms": "1500",
    "broker.heartbeat.interval.ms": "300",
    "auto.create.topics.enable": "false",
    "log.segment.bytes": "1048576",
    "log.index.size.max.bytes": "1048576",
    "log.cleaner.dedupe.buffer.size": "4194304",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
}

JVM_OPTIONS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # C1 only: the broker answers sooner; tests need no peak speed
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
)


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped."""


class BrokerUnavailable(BrokerError):
    """Java or Maven is missing: no broker can be started on this machine."""


# -- locations and tools ------------------------------------------------------------------------


def kafka_version(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("TESTENGINE_KAFKA_VERSION") or DEFAULT_VERSION


def cache_base(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("TESTENGINE_KAFKA_CACHE"):
        return Path(environ["TESTENGINE_KAFKA_CACHE"]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "testengine"


def lib_dir(version: str | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    return cache_base(environ) / f"kafka-{version or kafka_version(environ)}" / "lib"


def find_java(environ: Mapping[str, str] = os.environ) -> str:
    java_home = environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerUnavailable(
            "[testengine] java not found on PATH or in JAVA_HOME: the Kafka broker needs a "
            "Java 17+ runtime; install OpenJDK 17 (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return found


def _fetched(lib: Path) -> bool:
    return (lib / ".complete").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (parallel test workers fetch once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.testengine</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def fetch(
    version: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    timeout: float = 900.0,
) -> Path:
    """Make sure the broker jars are in the cache; return the lib folder (idempotent)."""
    version = version or kafka_version(environ)
    lib = lib_dir(version, environ)
    if _fetched(lib):
        return lib
    with _file_lock(lib.parent / ".lock"):
        if _fetched(lib):
            return lib
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerUnavailable(
                f"[testengine] mvn not found on PATH and Kafka {version} is not cached in {lib}: "
                "install Maven (Debian: apt-get install maven) or set "
                "TESTENGINE_TEST_KAFKA_BOOTSTRAP to an existing broker"
            )
        work = lib.parent / "fetch"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "pom.xml").write_text(POM_TEMPLATE.format(kafka=version, slf4j=SLF4J_VERSION))
        staging = work / "lib"
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"[testengine] Maven did not fetch Kafka {version} within {timeout:.0f} s"
            ) from exc
        if done.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"[testengine] Maven could not fetch org.apache.kafka:kafka_2.13:{version} "
                f"(exit {done.returncode}); check the version (TESTENGINE_KAFKA_VERSION) and "
                f"the Maven settings:\n{(done.stdout + done.stderr)[-3000:]}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        shutil.rmtree(work, ignore_errors=True)
        (lib / ".complete").write_text(version + "\n")
    return lib


def _classpath(lib: Path) -> str:
    """An explicit, sorted classpath: the class-data-sharing archive requires a stable one."""
    return os.pathsep.join(str(jar) for jar in sorted(lib.glob("*.jar")))


def _class_archive(lib: Path, java: str) -> Path:
    """The archive path, keyed by the Java runtime (another JDK cannot use it)."""
    real = os.path.realpath(java)
    stamp = f"{real}:{os.stat(real).st_mtime_ns}".encode()
    return lib.parent / f"classes-{hashlib.sha256(stamp).hexdigest()[:12]}.jsa"


def ensure_class_archive(lib: Path, java: str) -> Path | None:
    """Record the class-data archive once per Java runtime (best effort; about 4 s once).

    A throwaway broker is started and stopped with ``-XX:ArchiveClassesAtExit``; later brokers
    map the archive and answer in about half the time.
    """
    archive = _class_archive(lib, java)
    failed = archive.with_suffix(".failed")
    if archive.is_file() or failed.is_file():
        return archive if archive.is_file() else None
    with _file_lock(lib.parent / ".lock"):
        if archive.is_file() or failed.is_file():
            return archive if archive.is_file() else None
        partial = archive.with_suffix(f".{os.getpid()}.tmp")
        try:
            with tempfile.TemporaryDirectory(prefix="testengine-kafka-cds-") as scratch:
                broker = Broker(
                    Path(scratch),
                    lib=lib,
                    java=java,
                    extra_jvm_options=[f"-XX:ArchiveClassesAtExit={partial}"],
                )
                broker.start(timeout=120.0)
                broker.stop()
            if not partial.is_file():
                raise BrokerError("the JVM wrote no archive")
            partial.rename(archive)
        except (BrokerError, OSError) as exc:
            failed.write_text(str(exc))
            print(f"[testengine] broker runs without a class-data archive: {exc}", file=sys.stderr)
            return None
        finally:
            partial.unlink(missing_ok=True)
    return archive


# -- the Kafka protocol, just enough to know the broker answers ----------------------------------


def _kafka_string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def metadata_brokers(host: str, port: int, *, timeout: float = 2.0) -> tuple[int, int]:
    """(broker count, controller id) from a Metadata v4 request (supported by Kafka 1.0 to 4.x)."""
    body = struct.pack(">hhi", 3, 4, 1) + _kafka_string("testengine-probe")
    body += struct.pack(">i", 0) + b"\x00"  # no topics, no auto-creation
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        data = _read_exact(sock, size)
    # correlation id, throttle ms, then the broker array
    (count,) = struct.unpack_from(">i", data, 8)
    offset = 12
    for _ in range(count):
        offset += 4  # node id
        (host_len,) = struct.unpack_from(">h", data, offset)
        offset += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", data, offset)
        offset += 2 + max(rack_len, 0)
    (cluster_len,) = struct.unpack_from(">h", data, offset)
    offset += 2 + max(cluster_len, 0)
    (controller,) = struct.unpack_from(">i", data, offset)
    return count, controller


def _cluster_id() -> str:
    """A Kafka Uuid string (22 url-safe base64 characters) that no CLI takes for an option."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the broker ---------------------------------------------------------------------------------


class Broker:
    """One single-node KRaft broker: data, ports and state live in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        controller_port: int = 0,
        version: str | None = None,
        lib: Path | None = None,
        java: str | None = None,
        heap: str | None = None,
        settings: Mapping[str, str] | None = None,
        extra_jvm_options: Sequence[str] = (),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.controller_port = controller_port
        self.version = version or kafka_version(environ)
        self.lib = lib
        self.java = java
        self.heap = heap or environ.get("TESTENGINE_KAFKA_HEAP") or DEFAULT_HEAP
        self.settings = dict(settings or {})
        self.extra_jvm_options = [
            *extra_jvm_options,
            *environ.get("TESTENGINE_KAFKA_JVM_OPTS", "").split(),
        ]
        self.environ = environ
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None  # seconds the last start() took

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def _recording(self) -> bool:
        return any(o.startswith("-XX:ArchiveClassesAtExit") for o in self.extra_jvm_options)

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def start(self, timeout: float = 60.0) -> str:
        """Start (or restart) the broker and wait until it answers; return the bootstrap."""
        if self.running:
            return self.bootstrap
        began = time.monotonic()
        java = self.java or find_java(self.environ)
        lib = self.lib or fetch(self.version, environ=self.environ)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_ports()
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").is_file():
            self._format(java, lib, config)
        command = [java, *self._jvm_options(java, lib), "kafka.Kafka", str(config)]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting: {' '.join(command)}\n".encode())
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal does not reach the broker
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        self.started_in = time.monotonic() - began
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` seconds."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10.0)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: an unclean stop, as a crash would leave it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10.0)
        self.process = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _load_ports(self) -> None:
        state = self.data_dir / STATE_FILE
        saved: dict[str, Any] = json.loads(state.read_text()) if state.is_file() else {}
        self.port = self.port or int(saved.get("port") or 0) or free_port()
        self.controller_port = (
            self.controller_port or int(saved.get("controller_port") or 0) or free_port()
        )
        state.write_text(
            json.dumps({"port": self.port, "controller_port": self.controller_port, "pid": None})
        )

    def _write_config(self) -> Path:
        values = dict(BROKER_SETTINGS)
        values.update(
            {
                "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
                "listeners": (
                    f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
                ),
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
                "log.dirs": str(self.data_dir / "logs"),
            }
        )
        values.update(self.settings)
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        return path

    def _jvm_options(self, java: str, lib: Path) -> list[str]:
        options = [f"-Xmx{self.heap}", *JVM_OPTIONS]
        archive = None if self._recording else ensure_class_archive(lib, java)
        if archive is not None:
            options += [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto", "-Xlog:cds=off"]
        return [*options, *self.extra_jvm_options, "-cp", _classpath(lib)]

    def _format(self, java: str, lib: Path, config: Path) -> None:
        cluster_id = _cluster_id()
        command = [
            java,
            *self._jvm_options(java, lib),
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BrokerError(
                f"[testengine] formatting Kafka storage in {self.data_dir} failed "
                f"(exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(
                    f"[testengine] the Kafka broker exited with {self.process.returncode} while "
                    f"starting; log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                brokers, controller = metadata_brokers("127.0.0.1", self.port, timeout=1.0)
            except (OSError, struct.error) as exc:
                last = exc
            else:
                if brokers >= 1 and controller >= 0:
                    return
            time.sleep(0.05)  # poll interval while the JVM starts
        raise BrokerError(
            f"[testengine] the Kafka broker on {self.bootstrap} did not answer within "
            f"{timeout:.0f} s ({last}); log {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, size: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""


# -- command line -------------------------------------------------------------------------------


def _default_data_dir() -> Path:
    return cache_base() / "broker"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)  # poll interval for the broker's exit
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _save_pid(data_dir: Path, pid: int | None) -> None:
    state = data_dir / STATE_FILE
    values = json.loads(state.read_text()) if state.is_file() else {}
    values["pid"] = pid
    state.write_text(json.dumps(values))


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="kafka_broker.py", description="A single-node Kafka broker on 127.0.0.1 (KRaft)."
    )
    parser.add_argument("command", choices=["fetch", "run", "start", "stop"])
    parser.add_argument("--data-dir", type=Path, help="broker data (default: a cache folder)")
    parser.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    parser.add_argument("--fresh", action="store_true", help="delete the data dir first")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            print(fetch(), file=out)
            return 0
        if args.command == "run":
            return _run(args, out)
        data_dir = args.data_dir or _default_data_dir()
        state = data_dir / STATE_FILE
        saved = json.loads(state.read_text()) if state.is_file() else {}
        pid = saved.get("pid")
        if args.command == "stop":
            if pid and _pid_alive(int(pid)):
                _stop_pid(int(pid), 30.0)
            if state.is_file():
                _save_pid(data_dir, None)
            return 0
        # start
        if pid and _pid_alive(int(pid)):
            print(f"127.0.0.1:{saved['port']}", file=out)
            return 0
        if args.fresh:
            shutil.rmtree(data_dir, ignore_errors=True)
        broker = Broker(data_dir, port=args.port)
        broker.start(args.timeout)
        assert broker.process is not None
        _save_pid(data_dir, broker.process.pid)
        broker.process = None  # leave it running
        print(broker.bootstrap, file=out)
        return 0
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, out: IO[str]) -> int:
    temporary = args.data_dir is None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="testengine-kafka-"))
    if args.fresh and not temporary:
        shutil.rmtree(data_dir, ignore_errors=True)
    broker = Broker(data_dir, port=args.port)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker.start(args.timeout)
        print(broker.bootstrap, file=out, flush=True)
        while not stopping and broker.running:
            time.sleep(0.2)  # idle until a signal arrives
        return 0 if stopping else 1
    finally:
        broker.stop()
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
