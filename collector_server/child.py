"""A child process of the collector that reports on its stdout and is started again when it
dies: the processor of ``serve`` (``processor_child`` for the embedded log,
``consumer_child`` for Kafka) runs in one, so that ingest and processing use two cores.

:class:`Supervised` starts the command, hands every JSON object line the child writes to
``on_message``, and, when the child exits without being asked to, logs it, waits
:data:`RESTART_WAIT` and starts the command again (the child resumes from what it committed:
the store's offset, or the consumer group's).  ``send`` writes a line to the child's stdin
without ever blocking (a full pipe drops it); ``stop`` writes the stop line, waits, and kills
the child after the timeout.  End of file on its stdin tells a child that its collector is
gone, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import IO, Any, Final

import orjson

log = logging.getLogger("testengine.collector.processor")

RESTART_WAIT: Final = 1.0  # seconds before a child that died is started again


class Supervised:
    """One child process and its status lines (see the module docstring)."""

    def __init__(
        self,
        name: str,
        command: Callable[[], list[str]],
        on_message: Callable[[dict[str, Any]], None],
        *,
        on_spawn: Callable[[], None] | None = None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self.name = name  # "processor process": in the messages
        self.command = command
        self.on_message = on_message
        self.on_spawn = on_spawn  # before each child starts (its totals start again)
        self.on_eof = on_eof  # after each child's stdout ends
        self.error: str | None = None
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()

    def start(self) -> None:
        self._stopping.clear()
        self._proc = self._spawn()
        name = f"testengine-{self.name.replace(' ', '-')}-status"
        self._reader = threading.Thread(target=self._supervise, name=name)
        self._reader.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self.on_spawn is not None:
            self.on_spawn()
        proc = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)  # never block the caller of send()
        return proc

    def _supervise(self) -> None:
        """Follow the child's status lines; when it dies (not asked to stop), start another
        one after RESTART_WAIT seconds."""
        while True:
            proc = self._proc
            if proc is None or proc.stdout is None:
                return
            self._read(proc.stdout)
            status = proc.wait()
            if self._stopping.is_set():
                return
            self.error = f"the {self.name} exited with status {status}; restarting it"
            log.error("[testengine] %s", self.error)
            if self._stopping.wait(RESTART_WAIT):
                return
            with self._write_lock:
                if self._stopping.is_set():
                    return
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        stream.close()
                self._proc = self._spawn()
                self.restarts += 1

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if type(message) is dict:
                self.on_message(message)
        if self.on_eof is not None:
            self.on_eof()

    def send(self, line: bytes) -> None:
        """Write one short line to the child (atomic for a pipe; dropped when it is full)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            os.write(proc.stdin.fileno(), line)

    def stop(self, timeout: float, line: bytes = b"S\n") -> None:
        """Write ``line`` (the child's stop), close its stdin, wait for it to exit; kill it
        after ``timeout``."""
        self._stopping.set()
        with self._write_lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(proc.stdin.fileno(), True)
            os.write(proc.stdin.fileno(), line)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("[testengine] the %s did not stop in %g s", self.name, timeout)
            proc.kill()
            proc.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None


class ChildSide:
    """The collector's side of a child: what it shows of its :class:`Supervised`."""

    _child: Supervised

    @property
    def error(self) -> str | None:
        return self._child.error

    @property
    def restarts(self) -> int:
        return self._child.restarts
