"""An NDJSON file (optionally gzip) read from a byte offset, complete lines only."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson
import sqlalchemy as sa

from projections.errors import ConfigurationError, SourceMismatchError
from projections.events import MAX_LINE_BYTES, parse_occurred_at
from projections.sources import SourceBatch

CHUNK: Final = 1 << 20
FINGERPRINT_BYTES: Final = 4096


def _occurred_at(line: bytes) -> datetime | None:
    try:
        document = orjson.loads(line)
        return (
            parse_occurred_at(document.get("occurred_at")) if isinstance(document, dict) else None
        )
    except Exception:  # a bad last line simply has no time
        return None


def _read_some(handle: IO[bytes], path: Path, gzipped: bool) -> bytes:
    """Up to CHUNK bytes; b"" at the end of what is written so far."""
    try:
        if gzipped:
            # read1: read() of a stream cut short raises and drops what it had decompressed.
            return cast(gzip.GzipFile, handle).read1(CHUNK)
        return handle.read(CHUNK)
    except EOFError:
        return b""  # a gzip stream still being written: wait for the rest, like a half line
    except (OSError, zlib.error) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc


class NdjsonSource:
    """Lines of a file; position = 1-based line number, checkpoint = byte offset + fingerprints."""

    kind = "ndjson"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path.resolve())
        self.gzipped = path.name.endswith(".gz")
        self._handle: IO[bytes] | None = None
        self._offset = 0  # where the open handle stands (after the last complete line read)
        self._buffer = b""
        self._start = 0  # where the unread part of _buffer begins
        self._recent = b""  # the bytes just before self._offset, up to FINGERPRINT_BYTES
        self._recent_exact = True
        self._full_head: str | None = None
        self.until: tuple[int, int] | None = None  # stop after this cursor (verify)

    def _open(self) -> IO[bytes]:
        try:
            if self.gzipped:
                return cast(IO[bytes], gzip.open(self.path, "rb"))
            return self.path.open("rb")
        except OSError as exc:
            raise ConfigurationError(f"cannot open {self.path}: {exc.strerror}") from exc

    def _fingerprint(self, start: int, end: int) -> str:
        with self._open() as handle:
            try:
                handle.seek(start)
                data = handle.read(end - start)
            except (OSError, EOFError) as exc:
                raise SourceMismatchError(f"{self.path} cannot be read: {exc}") from exc
        return hashlib.sha256(data).hexdigest() if len(data) == end - start else ""

    def _state(self, offset: int) -> dict[str, Any]:
        """Offset plus fingerprints of the first and the last 4 KiB before it."""
        if offset >= FINGERPRINT_BYTES:
            if self._full_head is None:
                self._full_head = self._fingerprint(0, FINGERPRINT_BYTES)
            head = self._full_head
        else:
            head = self._fingerprint(0, offset)
        tail_start = max(0, offset - FINGERPRINT_BYTES)
        if (
            offset == self._offset
            and self._recent_exact
            and len(self._recent) == offset - tail_start
        ):
            tail = hashlib.sha256(self._recent).hexdigest()
        else:
            tail = self._fingerprint(tail_start, offset)
        return {"kind": self.kind, "offset": offset, "head": head, "tail": tail}

    def cursor(self, position: int, state: dict[str, Any]) -> tuple[int, int]:
        """Line numbers are the read order."""
        return (0, position)

    def verify(self, position: int, state: dict[str, Any]) -> None:
        """Refuse a file that was truncated or replaced since the checkpoint."""
        if position == 0:
            return
        if state.get("kind") != self.kind:
            raise SourceMismatchError(
                f"the checkpoint was written from a {state.get('kind', 'different')} source, "
                f"not {self.path}; run `projections rebuild --source {self.path}`"
            )
        offset = int(state.get("offset", 0))
        expected = self._state(offset)
        if expected["head"] != state.get("head") or expected["tail"] != state.get("tail"):
            raise SourceMismatchError(
                f"{self.path} no longer matches the checkpoint at line {position} "
                f"(byte {offset}): it was truncated or replaced. "
                f"Run `projections rebuild --source {self.path}` to start over"
            )

    def read(
        self,
        position: int,
        state: dict[str, Any],
        limit: int,
        connection: sa.Connection | None = None,
    ) -> SourceBatch:
        """Up to `limit` non-blank complete lines after the checkpoint."""
        offset = int(state.get("offset", 0)) if position else 0
        if self._handle is None or offset != self._offset:
            self._reposition(offset)
        lines: list[tuple[int, bytes]] = []
        consumed: list[bytes] = [self._recent]
        line_no = position
        last_line = self.until[1] if self.until is not None else None
        while len(lines) < limit and (last_line is None or line_no < last_line):
            line = self._next_line()
            if line is None:
                break
            consumed.append(line)
            consumed.append(b"\n")
            line_no += 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():
                lines.append((line_no, line))
        if line_no == position:
            return SourceBatch([], position, state, advanced=False)
        if self._recent_exact:
            self._recent = b"".join(consumed)[-FINGERPRINT_BYTES:]
        else:
            self._reload_recent()
        return SourceBatch(lines, line_no, self._state(self._offset))

    def _reposition(self, offset: int) -> None:
        self.close()
        self._handle = self._open()
        try:
            self._handle.seek(offset)
        except (OSError, EOFError) as exc:
            raise SourceMismatchError(f"{self.path} is shorter than the checkpoint") from exc
        self._offset = offset
        self._buffer = b""
        self._start = 0
        self._reload_recent()

    def _reload_recent(self) -> None:
        start = max(0, self._offset - FINGERPRINT_BYTES)
        self._recent = b""
        if self._offset:
            with self._open() as handle:
                handle.seek(start)
                self._recent = handle.read(self._offset - start)
        self._recent_exact = len(self._recent) == self._offset - start

    def _next_line(self) -> bytes | None:
        """The next complete line without its newline, or None at the end of what is written."""
        assert self._handle is not None
        while True:
            end = self._buffer.find(b"\n", self._start)
            if end >= 0:
                line = self._buffer[self._start : end]
                self._offset += end + 1 - self._start
                self._start = end + 1
                return line
            # Keep only the unread tail: a chunk is split into lines once, not once per line.
            self._buffer = self._buffer[self._start :]
            self._start = 0
            if len(self._buffer) > MAX_LINE_BYTES + 1:
                return self._skip_long_line()
            chunk = _read_some(self._handle, self.path, self.gzipped)
            if not chunk:
                return None  # a final line without a newline waits until it is complete
            self._buffer += chunk

    def _skip_long_line(self) -> bytes | None:
        # Keep what proves the line too long; never hold a huge line in memory.
        assert self._handle is not None
        kept = self._buffer[: MAX_LINE_BYTES + 1]
        skipped = len(self._buffer)
        self._recent_exact = False
        self._buffer = b""
        while True:
            chunk = _read_some(self._handle, self.path, self.gzipped)
            if not chunk:
                # Incomplete: rewind so the line is read again once it is complete.
                self._reposition(self._offset)
                return None
            end = chunk.find(b"\n")
            if end >= 0:
                self._buffer = chunk[end + 1 :]
                self._offset += skipped + end + 1
                return kept
            skipped += len(chunk)

    def head(self) -> int | None:
        """Not known without reading the whole file."""
        return None

    def backlog(self, position: int, state: dict[str, Any]) -> tuple[int, datetime | None]:
        """Complete non-blank lines after the checkpoint, and the last one's occurred_at."""
        offset = int(state.get("offset", 0)) if position else 0
        count, last = 0, b""
        with self._open() as handle:
            handle.seek(offset)
            pending = b""
            while chunk := _read_some(handle, self.path, self.gzipped):
                pending += chunk
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        count += 1
                        last = line
        return count, _occurred_at(last)

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
