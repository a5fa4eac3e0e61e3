"""Write-ahead log: entries the Kafka sink could not deliver, kept on local disk until replayed.

Layout of the WAL directory::

    00000000000000000001.wal   segments, appended to in order, fsynced after every append
    00000000000000000002.wal
    head                       the first entry not yet replayed (segment number, byte offset)
    lock                       held (flock) by the one process that owns the WAL

A segment is a sequence of frames ``>II`` (payload length, CRC-32 of the payload) followed by
the payload.  An append writes all frames of one call with one ``write`` and one ``fsync``, so
after a crash (even SIGKILL or power loss) the log holds every acknowledged append; a torn
tail (short frame, CRC mismatch) is cut off when the WAL is opened again.

Replay reads a chunk from the head (:meth:`WriteAheadLog.read`), delivers it, then
:meth:`WriteAheadLog.commit` moves the head past it and deletes segments that are fully
replayed; when the log is empty every segment is deleted.  A crash between delivery and commit
replays the chunk again (at-least-once; the store deduplicates by result id).

Errors::

    WalError          the log cannot be opened, written or read
     └── WalFull      an append would pass ``max_bytes``
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

FRAME = struct.Struct(">II")
HEAD = struct.Struct(">QQI")
SUFFIX = ".wal"
#: A frame claiming more than this is corruption, not data.
MAX_ENTRY_BYTES = 64 << 20


class WalError(Exception):
    """The write-ahead log cannot be opened, written or read."""


class WalFull(WalError):
    """An append would pass the size limit of the write-ahead log."""

    def __init__(self, size: int, needed: int, limit: int) -> None:
        super().__init__(
            f"[testengine] write-ahead log full: {size} bytes held, {needed} more needed, "
            f"limit {limit} bytes; it drains when Kafka accepts records again"
        )
        self.size = size
        self.needed = needed
        self.limit = limit


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class WalChunk:
    """Entries read from the head; pass the chunk to :meth:`WriteAheadLog.commit` once delivered."""

    entries: tuple[bytes, ...]
    start: Position
    end: Position


@dataclass(slots=True)
class _Segment:
    size: int
    entries: int  # entries from the head (for the head segment) or from 0 (for the others)


def encode_frames(entries: Sequence[bytes]) -> bytes:
    return b"".join(FRAME.pack(len(e), zlib.crc32(e)) + e for e in entries)


def scan_frames(data: bytes, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Valid frames of ``data`` from ``start``: ([(payload offset, length)], end of the last)."""
    frames: list[tuple[int, int]] = []
    offset = start
    while offset + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, offset)
        begin = offset + FRAME.size
        if length > MAX_ENTRY_BYTES or begin + length > len(data):
            break
        if zlib.crc32(data[begin : begin + length]) != crc:
            break
        frames.append((begin, length))
        offset = begin + length
    return frames, offset


class WriteAheadLog:
    """An append-only, fsynced, CRC-framed log of byte entries.  Thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._head = Position(1, 0)
        self._active: IO[bytes] | None = None
        self._active_number = 0
        self._lock_file: IO[bytes] | None = None
        self.dropped_bytes = 0  # torn or corrupt bytes cut off when opening

    # -- state

    @property
    def depth(self) -> int:
        """Entries not yet replayed."""
        with self._lock:
            return sum(s.entries for s in self._segments.values())

    @property
    def size(self) -> int:
        """Bytes of segment files on disk."""
        with self._lock:
            return self._disk_bytes()

    def _disk_bytes(self) -> int:
        return sum(s.size for s in self._segments.values())

    # -- open / close

    def open(self) -> None:
        """Create or recover the log; cut a torn tail off."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self._head = self._read_head()
            numbers = sorted(
                int(p.name[: -len(SUFFIX)])
                for p in self.directory.glob(f"*{SUFFIX}")
                if p.name[: -len(SUFFIX)].isdigit()
            )
            for number in numbers:
                if number < self._head.segment:
                    self._segment_path(number).unlink(missing_ok=True)
                    continue
                start = self._head.offset if number == self._head.segment else 0
                self._segments[number] = self._recover(number, start)
            if self._head.segment not in self._segments:
                # the head segment is gone (fully replayed, or lost): start at the next one
                self._head = Position(min(self._segments, default=self._head.segment), 0)
            head = self._segments.get(self._head.segment)
            if head is not None and self._head.offset > head.size:  # past a cut tail
                self._head = Position(self._head.segment, head.size)
            self._active_number = max(self._segments, default=self._head.segment)

    def close(self) -> None:
        with self._lock:
            if self._active is not None:
                self._active.close()
                self._active = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def _take_lock(self) -> None:
        handle = open(self.directory / "lock", "a+b")  # noqa: SIM115 - held until close()
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError as exc:
            handle.close()
            raise WalError(
                f"[testengine] write-ahead log {self.directory} is in use by another process; "
                "give every collector process its own data directory"
            ) from exc
        self._lock_file = handle

    def _recover(self, number: int, start: int) -> _Segment:
        path = self._segment_path(number)
        data = path.read_bytes()
        frames, end = scan_frames(data, min(start, len(data)))
        if end < len(data):
            cut = len(data) - end
            self.dropped_bytes += cut
            log.warning(
                "[testengine] write-ahead log segment %s: cut %d torn or corrupt bytes at "
                "offset %d (an append interrupted by a crash)",
                path,
                cut,
                end,
            )
            with open(path, "r+b") as handle:
                handle.truncate(end)
                self._sync(handle)
        return _Segment(size=end, entries=len(frames))

    # -- append

    def append(self, entries: Sequence[bytes]) -> None:
        """Append entries durably (one write, one fsync); raise WalFull past the limit."""
        if not entries:
            return
        data = encode_frames(entries)
        with self._lock:
            held = self._disk_bytes()
            if held + len(data) > self.max_bytes:
                raise WalFull(held, len(data), self.max_bytes)
            handle = self._writable(len(data))
            segment = self._segments[self._active_number]
            try:
                handle.write(data)
                handle.flush()
                self._sync(handle)
            except OSError as exc:
                self._undo_append(handle, segment.size)
                raise WalError(
                    f"[testengine] cannot write the write-ahead log {self.directory}: {exc}"
                ) from exc
            segment.size += len(data)
            segment.entries += len(entries)

    def _writable(self, needed: int) -> IO[bytes]:
        current = self._segments.get(self._active_number)
        if current is None or (current.size > 0 and current.size + needed > self.segment_bytes):
            if self._active is not None:
                self._active.close()
                self._active = None
            if current is not None:
                self._active_number += 1
            self._segments[self._active_number] = _Segment(size=0, entries=0)
        if self._active is None:
            path = self._segment_path(self._active_number)
            created = not path.exists()
            try:
                self._active = open(path, "ab")  # noqa: SIM115 - kept open between appends
            except OSError as exc:
                raise WalError(f"[testengine] cannot create {path}: {exc}") from exc
            if created:
                self._sync_directory()
        return self._active

    def _undo_append(self, handle: IO[bytes], size: int) -> None:
        try:
            handle.truncate(size)
            handle.seek(size)
        except OSError:
            log.exception("[testengine] could not undo a failed write-ahead log append")

    # -- replay

    def read(self, max_entries: int = 1000, max_bytes: int = 4 << 20) -> WalChunk:
        """Up to ``max_entries`` entries (at least one if any) from the head, in order."""
        with self._lock:
            start = self._head
            entries: list[bytes] = []
            taken = 0
            position = start
            for number in sorted(n for n in self._segments if n >= start.segment):
                size = self._segments[number].size
                offset = start.offset if number == start.segment else 0
                position = Position(number, offset)
                if offset >= size:
                    continue
                with open(self._segment_path(number), "rb", buffering=1 << 20) as handle:
                    handle.seek(offset)
                    while offset < size:
                        header = handle.read(FRAME.size)
                        if len(header) != FRAME.size:
                            raise WalError(
                                f"[testengine] write-ahead log {self._segment_path(number)} "
                                f"is shorter than expected ({offset} of {size} bytes)"
                            )
                        length, crc = FRAME.unpack(header)
                        if entries and (len(entries) >= max_entries or taken + length > max_bytes):
                            return WalChunk(tuple(entries), start, position)
                        payload = handle.read(length)
                        if len(payload) != length or zlib.crc32(payload) != crc:
                            raise WalError(
                                f"[testengine] write-ahead log {self._segment_path(number)} "
                                f"changed on disk at offset {offset}"
                            )
                        entries.append(payload)
                        taken += length
                        offset += FRAME.size + length
                        position = Position(number, offset)
            return WalChunk(tuple(entries), start, position)

    def commit(self, chunk: WalChunk) -> None:
        """Drop the entries of ``chunk`` (read from the current head) after their delivery."""
        if not chunk.entries:
            return
        with self._lock:
            if chunk.start != self._head:
                raise WalError(
                    f"[testengine] write-ahead log commit from {chunk.start}, head is {self._head}"
                )
            remaining = len(chunk.entries)
            for number in sorted(n for n in self._segments if n <= chunk.end.segment):
                segment = self._segments[number]
                taken = min(segment.entries, remaining)
                segment.entries -= taken
                remaining -= taken
            self._head = chunk.end
            obsolete = [n for n in self._segments if n < self._head.segment]
            if all(s.entries == 0 for s in self._segments.values()):
                # everything replayed: start afresh in a new segment
                obsolete = list(self._segments)
                self._active_number = max(self._segments) + 1
                self._head = Position(self._active_number, 0)
                if self._active is not None:
                    self._active.close()
                    self._active = None
            self._write_head(self._head)
            for number in obsolete:
                del self._segments[number]
                self._segment_path(number).unlink(missing_ok=True)

    # -- files

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{SUFFIX}"

    def _read_head(self) -> Position:
        path = self.directory / "head"
        try:
            data = path.read_bytes()
            segment, offset, crc = HEAD.unpack(data)
        except (OSError, struct.error):
            return Position(1, 0)
        if zlib.crc32(data[:16]) != crc:
            log.warning("[testengine] write-ahead log head %s is corrupt: replaying it all", path)
            return Position(1, 0)
        return Position(segment, offset)

    def _write_head(self, head: Position) -> None:
        packed = struct.pack(">QQ", head.segment, head.offset)
        path = self.directory / "head"
        partial = self.directory / "head.tmp"
        with open(partial, "wb") as handle:
            handle.write(packed + struct.pack(">I", zlib.crc32(packed)))
            handle.flush()
            self._sync(handle)
        os.replace(partial, path)
        self._sync_directory()

    def _sync(self, handle: IO[bytes]) -> None:
        if self.fsync:
            os.fsync(handle.fileno())

    def _sync_directory(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
