"""Batches that could not be delivered, on disk until ``testengine upload`` sends them.

One file per batch, holding exactly the JSON body of ``POST /v1/results``.  Writes are atomic
(a temporary file in the same directory, fsync, rename), so a crash never leaves half a batch
behind.  :func:`replay` posts each file and deletes it only after the collector acknowledged
it; running it twice is safe because the collector deduplicates results by id.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import orjson

if TYPE_CHECKING:
    from pytest_testengine.transport import Answer

SUFFIX: Final = ".json"


class Spool:
    """A spool directory; created on the first write."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r})"

    def write(self, body: bytes) -> Path:
        """Store one encoded batch atomically; raises OSError when the disk refuses."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            target = self.directory / name
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def files(self) -> list[Path]:
        """Spooled batches, oldest first (temporary files of unfinished writes are skipped)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.iterdir() if p.suffix == SUFFIX and not p.name.startswith(".")
        )


def count_results(body: bytes) -> int:
    try:
        results = orjson.loads(body).get("results")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return len(results) if isinstance(results, list) else 0


@dataclass(slots=True)
class ReplayReport:
    files_sent: int = 0
    results_sent: int = 0
    files_left: int = 0
    problems: list[str] = field(default_factory=list)


def replay(spool: Spool, deliver: Callable[[bytes], Answer]) -> ReplayReport:
    """Deliver every spooled batch; delete a file only once the collector acknowledged it.

    Stops at the first batch that cannot be delivered for a reason that would stop the others
    too (collector unreachable, bad token or URL); a batch the collector refuses as invalid is
    left in place and reported, and the others are still tried.
    """
    from pytest_testengine.transport import Delivered, Rejected  # the plugin only writes

    report = ReplayReport()
    files = spool.files()
    for index, path in enumerate(files):
        try:
            body = path.read_bytes()
        except OSError as exc:
            report.problems.append(f"could not read {path} ({exc})")
            report.files_left += 1
            continue
        answer = deliver(body)
        if isinstance(answer, Delivered):
            path.unlink(missing_ok=True)
            report.files_sent += 1
            report.results_sent += count_results(body)
            continue
        report.files_left += 1
        report.problems.append(f"{path.name}: {answer.reason}")
        if not isinstance(answer, Rejected) or answer.keep:
            report.files_left += len(files) - index - 1
            break
    return report
