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


def _last_bytes(lines: list[bytes]) -> list[bytes]:
    """The shortest tail of `lines` holding FINGERPRINT_BYTES bytes (newlines counted)."""
    size = 0
    for index in range(len(lines) - 1, -1, -1):
        size += len(lines[index]) + 1
        if size >= FINGERPRINT_BYTES:
            return lines[index:]
    return lines


class NdjsonSource:
    """Lines of a file; position = 1-based line number, checkpoint = byte offset + fingerprints."""

    kind = "ndjson"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path.resolve())
        self.gzipped = path.name.endswith(".gz")
        self._handle: IO[bytes] | None = None
        self._offset = 0  # where the open handle stands (after the last complete line read)
        self._buffer = b""  # read but not yet split: the start of an incomplete line
        self._lines: list[bytes] = []  # complete lines split from the file, not yet returned
        self._index = 0  # the next of _lines to return
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
        before = self._recent  # a line cut short below may reload _recent to the new offset
        lines: list[tuple[int, bytes]] = []
        line_no = position
        last_line = self.until[1] if self.until is not None else None
        tail: list[bytes] = []  # the last raw lines, for the fingerprint of what was read
        while len(lines) < limit and (last_line is None or line_no < last_line):
            wanted = limit - len(lines)
            if last_line is not None:
                wanted = min(wanted, last_line - line_no)
            raw = self._next_lines(wanted)
            if not raw:
                break
            for line in raw:
                line_no += 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line and not line.isspace():  # blank lines are skipped (no copy made)
                    lines.append((line_no, line))
            tail = _last_bytes([*tail, *raw[-FINGERPRINT_BYTES:]])
        if line_no == position:
            return SourceBatch([], position, state, advanced=False)
        # A line over the limit is kept cut short: its bytes are not the file's, read them.
        if self._recent_exact and all(len(line) <= MAX_LINE_BYTES for line in tail):
            self._recent = (before + b"".join(line + b"\n" for line in tail))[-FINGERPRINT_BYTES:]
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
        self._lines, self._index = [], 0
        self._reload_recent()

    def _reload_recent(self) -> None:
        start = max(0, self._offset - FINGERPRINT_BYTES)
        self._recent = b""
        if self._offset:
            with self._open() as handle:
                handle.seek(start)
                self._recent = handle.read(self._offset - start)
        self._recent_exact = len(self._recent) == self._offset - start

    def _next_lines(self, limit: int) -> list[bytes]:
        """Up to `limit` complete lines, without newlines; [] at the end of what is written."""
        assert self._handle is not None
        while self._index >= len(self._lines):
            if b"\n" in self._buffer:
                # Split what was read once: the lines of a batch cost one slice each.
                self._lines = self._buffer.split(b"\n")
                self._buffer = self._lines.pop()
                self._index = 0
                break
            if len(self._buffer) > MAX_LINE_BYTES + 1:
                line = self._skip_long_line()
                return [] if line is None else [line]
            chunk = _read_some(self._handle, self.path, self.gzipped)
            if not chunk:
                return []  # a final line without a newline waits until it is complete
            self._buffer += chunk
        taken = self._lines[self._index : self._index + limit]
        self._index += len(taken)
        self._offset += sum(map(len, taken)) + len(taken)
        return taken

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
