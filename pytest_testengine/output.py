"""``--testengine-output FILE``: the results of a run as JSON lines, no collector needed.

The first line holds the run context, each following line one result::

    {"schema": 1, "run": {...}}
    {"result": {...}}
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from pytest_testengine import SCHEMA_VERSION


class OutputFile:
    """Appends results to one file; safe to call from several threads."""

    def __init__(self, path: str | Path, run: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.written = 0
        self._run = run
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the file (and its directory) and write the run line; raises OSError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._file.write(orjson.dumps({"schema": SCHEMA_VERSION, "run": self._run}) + b"\n")

    @staticmethod
    def lines(results: Iterable[Mapping[str, Any]]) -> bytes:
        """The lines of ``results`` (encoded apart from writing, on another thread maybe)."""
        return b"".join(orjson.dumps({"result": r}) + b"\n" for r in results)

    def write_lines(self, lines: bytes) -> None:
        with self._lock:
            if self._file is None:
                raise OSError(f"{self.path} is not open")
            self._file.write(lines)
            self.written += lines.count(b"\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
