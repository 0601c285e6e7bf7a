"""`import`: append an NDJSON log to the database event log, each event once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from projections import dialect
from projections.events import (
    MAX_DEPTH,
    MAX_EVENT_ID,
    MAX_KEY,
    MAX_LINE_BYTES,
    parse_occurred_at,
)
from projections.sources.ndjson import NdjsonSource
from projections.tables import TABLES

CHUNK = 20_000
_LOG = TABLES["event_log"]
_COLUMNS = (
    "event_id",
    "event_name",
    "aggregate_type",
    "aggregate_id",
    "occurred_at",
    "version",
    "idempotency_key",
    "event",
)
_BIGINT = 1 << 63


@dataclass
class ImportResult:
    """What an import read, stored, found already there, and could not store."""

    source: str
    read: int = 0
    stored: int = 0
    already: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    written: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {
            "source": self.source,
            "read": self.read,
            "stored": self.stored,
            "already_there": self.already,
            "bad": len(self.bad),
            "bad_lines": self.bad,
            "written": self.written,
        }


class Unstorable(Exception):
    """A line that cannot become an event_log row."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def entry(line: bytes) -> dict[str, Any]:
    """The event_log row for one line, or Unstorable with the reason."""
    if len(line) > MAX_LINE_BYTES:
        raise Unstorable("line_too_long", f"line is {len(line)} bytes, over 1 MiB")
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "UTF-8" in text:
            raise Unstorable("invalid_utf8", "line is not valid UTF-8") from None
        if "surrogate" in text:
            raise Unstorable("lone_surrogate", "a string holds a lone UTF-16 surrogate") from None
        raise Unstorable("invalid_json", f"not valid JSON: {text}") from None
    except RecursionError:
        raise Unstorable("too_deep", f"nesting deeper than {MAX_DEPTH}") from None
    if not isinstance(document, dict):
        raise Unstorable("not_an_object", f"a JSON {type(document).__name__}, not an object")
    if line.count(b"{") + line.count(b"[") > MAX_DEPTH and _deeper_than(document, MAX_DEPTH):
        raise Unstorable("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if b"\\u0000" in line and _holds_nul(document):
        raise Unstorable("nul_character", "a NUL character cannot be stored")
    event_id = document.get("event_id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID:
        raise Unstorable(
            "invalid_event_id", "event_id must be a non-empty string of at most 128 characters"
        )
    return {
        "event_id": event_id,
        "event_name": _text(document.get("event_name")),
        "aggregate_type": _text(document.get("aggregate_type")),
        "aggregate_id": _text(document.get("aggregate_id")),
        "occurred_at": _timestamp(document.get("occurred_at")),
        "version": _version(document.get("version")),
        "idempotency_key": _text(document.get("idempotency_key")),
        "event": document,
    }


def _holds_nul(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            if any("\x00" in key for key in value):
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _deeper_than(document: Any, limit: int) -> bool:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return False


def _text(value: Any) -> str | None:
    # Longer values go into the event only: the indexed columns cap an entry's size,
    # and such an event is quarantined when it is projected anyway.
    return value if isinstance(value, str) and value and len(value) <= MAX_KEY else None


def _timestamp(value: Any) -> datetime | None:
    try:
        return parse_occurred_at(value)
    except Exception:  # any invalid timestamp is simply not copied into the column
        return None


def _version(value: Any) -> int | None:
    return value if type(value) is int and -_BIGINT <= value < _BIGINT else None


def _entries(
    path: Path, result: ImportResult, on_progress: Callable[[int, int], None] | None
) -> Iterator[list[dict[str, Any]]]:
    source = NdjsonSource(path)
    position, state = 0, dict[str, Any]()
    try:
        while True:
            batch = source.read(position, state, CHUNK)
            if not batch.advanced:
                return
            position, state = batch.position, batch.state
            rows = []
            for line_no, line in batch.lines:
                result.read += 1
                try:
                    rows.append(entry(line))
                except Unstorable as bad:
                    result.bad.append(
                        {"line": line_no, "reason": bad.reason, "message": bad.message}
                    )
            if on_progress is not None:
                on_progress(int(state.get("offset", 0)), result.read)
            yield rows
    finally:
        source.close()


def import_log(
    engine: Engine,
    path: Path,
    *,
    strict: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Append every storable line of `path` to event_log in one transaction."""
    result = ImportResult(source=str(path))
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            for rows in _entries(path, result, on_progress):
                if strict and result.bad:
                    continue  # keep reading to report every bad line; nothing is written
                stored = dialect.append_event_log(connection, _LOG, _COLUMNS, rows)
                result.stored += stored
                result.already += len(rows) - stored
        except BaseException:
            transaction.rollback()
            raise
        if strict and result.bad:
            transaction.rollback()
            result.stored = result.already = 0
            result.written = False
        else:
            transaction.commit()
    return result
