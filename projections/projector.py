"""The loop: read a batch, decode, route, fold, write rows and checkpoints in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import dialect, store
from projections.batch import Pending
from projections.config import Settings
from projections.events import Event, Invalid, Unknown, decode, utc_now
from projections.fingerprint import current as current_fingerprints
from projections.fold import (
    Counters,
    Folder,
    aggregate_keys,
    idempotency_key,
    referenced_keys,
    resolve_copies,
)
from projections.sources import Source, SourceBatch
from projections.store import Checkpoint

ProgressCallback = Callable[[SourceBatch, Counters], None]
FINGERPRINTS = current_fingerprints()


@dataclass
class RunResult:
    """What one catch-up did, and where every projector stands after it."""

    counters: Counters = field(default_factory=Counters)
    position: int = 0
    batches: int = 0
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        """The one-line summary as a dict (SPEC §8)."""
        return {**self.counters.as_dict(), "position": self.position}


def verify_source(engine: Engine, source: Source) -> dict[str, Checkpoint]:
    """Refuse, before writing anything, a source that no longer matches a checkpoint."""
    with engine.connect() as connection:
        checkpoints = store.read_checkpoints(connection, source.label)
    for checkpoint in checkpoints.values():
        source.verify(checkpoint.position, checkpoint.source_state)
    return checkpoints


def catch_up(
    engine: Engine,
    source: Source,
    settings: Settings,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Apply everything after the checkpoints, one transaction per batch, until caught up."""
    verify_source(engine, source)
    result = RunResult()
    while True:
        if should_stop is not None and should_stop():
            result.interrupted = True
            break
        with engine.begin() as connection:
            dialect.lock_writers(connection)
            batch, counters, position = one_batch(connection, source, settings)
        if batch is None:
            result.position = position
            break
        result.counters.add(counters)
        result.position = batch.position
        result.batches += 1
        if progress is not None:
            progress(batch, result.counters)
    return result


def one_batch(
    connection: sa.Connection, source: Source, settings: Settings
) -> tuple[SourceBatch | None, Counters, int]:
    """Read, fold and write one batch in the caller's locked transaction; None when caught up."""
    checkpoints = store.read_checkpoints(connection, source.label)
    if settings.projectors is not None:
        checkpoints = {k: v for k, v in checkpoints.items() if k in settings.projectors}
    cursors = {name: source.cursor(c.position, c.source_state) for name, c in checkpoints.items()}
    start = checkpoints[min(cursors, key=cursors.__getitem__)]
    start_cursor = source.cursor(start.position, start.source_state)
    batch = source.read(start.position, start.source_state, settings.batch_size, connection)
    if not batch.advanced:
        return None, Counters(), start.position

    events: list[Event] = []
    quarantined: list[Invalid] = []
    counters = Counters(read=0)
    for index, (position, line) in enumerate(batch.lines):
        item = decode(position, line, strict=settings.strict)
        cursor = batch.cursor(index)
        if isinstance(item, Event):
            name = item.family.name
            if name in cursors and cursor > cursors[name]:
                events.append(item)
        elif cursor > start_cursor:
            counters.read += 1
            if isinstance(item, Unknown):
                counters.unknown += 1
            else:
                counters.quarantined += 1
                quarantined.append(item)

    state = Pending()
    store.load_rows(connection, state, (key for event in events for key in aggregate_keys(event)))
    keys = [k for e in events if (k := idempotency_key(e)) is not None]
    seen_ids, seen_keys = store.seen_before(connection, [e.event_id for e in events], keys)
    folder = Folder(state, settings.version_mode, source.label, seen_ids, seen_keys, counters)
    last_ids: dict[str, str] = {}
    for event in events:
        counters.read += 1
        folder.apply(event)
        last_ids[event.family.name] = event.event_id
    newest = max((e.occurred_at for e in events), default=None)
    store.load_rows(connection, state, referenced_keys(state))
    resolve_copies(state)

    now = utc_now()
    store.write_batch(
        connection, state, folder.ledger, folder.anomalies, quarantined, source.label, now
    )
    moved = []
    end_cursor = source.cursor(batch.position, batch.state)
    for name, checkpoint in checkpoints.items():
        if cursors[name] < end_cursor:
            checkpoint.source = source.label
            checkpoint.position = batch.position
            checkpoint.source_state = batch.state
            checkpoint.last_event_id = last_ids.get(checkpoint.projector, checkpoint.last_event_id)
            checkpoint.updated_at = now
            if checkpoint.fingerprint is None:  # the code that builds this projector's rows
                checkpoint.fingerprint = FINGERPRINTS[name]
            if newest is not None:
                checkpoint.last_occurred_at = max(newest, checkpoint.last_occurred_at or newest)
            moved.append(checkpoint)
    store.write_checkpoints(connection, moved)
    return batch, counters, batch.position


def rebuild(
    engine: Engine,
    source: Source,
    settings: Settings,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Drop the read model's rows and replay the whole source."""
    with engine.begin() as connection:
        dialect.lock_writers(connection)
        store.reset(connection)
    return catch_up(engine, source, settings, progress=progress, should_stop=should_stop)
