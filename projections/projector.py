"""The loop: read a batch, decode, route, fold, write rows and checkpoints in one transaction."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import dialect, store
from projections.config import Settings
from projections.events import Event, Invalid, Unknown, decode, utc_now
from projections.fingerprint import current as current_fingerprints
from projections.fold import (
    Counters,
    Folder,
    idempotency_key,
)
from projections.resident import Resident
from projections.sources import Source, SourceBatch
from projections.store import Checkpoint

ProgressCallback = Callable[[SourceBatch, Counters], None]
_OCCURRED_AT = attrgetter("occurred_at")
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
    lock: str = dialect.WRITERS,
) -> RunResult:
    """Apply everything after the checkpoints until caught up.

    One transaction covers many batches: their rows stay in memory (`Resident`) and
    are written once, with the checkpoints, when the transaction ends: at the end of
    the source, when asked to stop, every `commit_seconds`, or when `resident_rows`
    rows are held (then they are dropped, which bounds memory). Each transaction holds
    the writers' lock named `lock` (a rebuild's shadow has its own).
    """
    verify_source(engine, source)
    with _collecting_at_commits(), _quick_handoffs():
        return _catch_up(engine, source, settings, progress, should_stop, lock)


_COLLECT_SECONDS = 60.0


@contextmanager
def _collecting_at_commits() -> Iterator[None]:
    """Run the cyclic garbage collector only between transactions, not every few allocations.

    A batch allocates tens of thousands of objects that live until it ends, and the
    resident rows live for the whole run: automatic collections would walk them all
    over again, costing a third of the time. Nothing here relies on cycles being
    collected early; `_catch_up` collects after a commit now and then.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# How long the fold may keep the interpreter's lock from the writer thread (the default
# is 5 ms).
_SWITCH_SECONDS = 0.0005
_handoffs = threading.Lock()
_running = 0  # runs inside _quick_handoffs in this process
_saved_interval = 0.0  # the process's own interval, put back when the last run ends


@contextmanager
def _quick_handoffs() -> Iterator[None]:
    """Let the writer thread have the interpreter's lock back soon after each round trip.

    The ledger's background write makes a few round trips per batch; after each one it
    needs the lock, which the fold on the main thread holds. At the default switch
    interval it waited up to 5 ms every time, fell behind, and the next batch's ledger
    lookup waited for it: a 1M rebuild into PostgreSQL ran 3.5 % faster with 0.5 ms.
    The interval is the process's: runs on several threads (a scheduler's) share it, and
    the last one to end puts the process's own back.
    """
    global _running, _saved_interval
    with _handoffs:
        if _running == 0:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, _SWITCH_SECONDS))
        _running += 1
    try:
        yield
    finally:
        with _handoffs:
            _running -= 1
            if _running == 0:
                sys.setswitchinterval(_saved_interval)


def _catch_up(
    engine: Engine,
    source: Source,
    settings: Settings,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
    lock: str,
) -> RunResult:
    result = RunResult()
    resident = Resident()
    written: dict[str, tuple[int, Any]] | None = None  # the checkpoints our last commit left
    done = False
    hooks = (progress, should_stop)
    collected = time.monotonic()
    try:
        while not done:
            with engine.begin() as connection:
                try:
                    dialect.lock_writers(connection, lock)
                    if written is not None and _positions(connection, source) != written:
                        resident.forget()  # another writer committed meanwhile: rows may be old
                    resident.start(connection)
                    done = _transaction(connection, source, settings, resident, result, hooks)
                    resident.flush(connection)
                    written = _positions(connection, source)
                finally:
                    resident.close()  # nothing may use the connection after the transaction
            if len(resident) >= settings.resident_rows:
                resident.forget(ledger=False)
            if time.monotonic() - collected >= _COLLECT_SECONDS:
                gc.collect()  # the few cycles batches leave (about a hundred objects each)
                collected = time.monotonic()
    finally:
        resident.close()
    return result


def _transaction(
    connection: sa.Connection,
    source: Source,
    settings: Settings,
    resident: Resident,
    result: RunResult,
    hooks: tuple[ProgressCallback | None, Callable[[], bool] | None],
) -> bool:
    """Fold batches into one transaction until it is long enough; True when the run is over."""
    progress, should_stop = hooks
    started = time.monotonic()
    while True:
        if should_stop is not None and should_stop():
            result.interrupted = True
            return True
        batch, counters, position = one_batch(connection, source, settings, resident)
        if batch is None:
            result.position = position
            return True
        result.counters.add(counters)
        result.position = batch.position
        result.batches += 1
        if progress is not None:
            progress(batch, result.counters)
        if (
            len(resident) >= settings.resident_rows
            or time.monotonic() - started >= settings.commit_interval
        ):
            return False


def _positions(connection: sa.Connection, source: Source) -> dict[str, tuple[int, Any]]:
    return {
        name: (c.position, c.updated_at)
        for name, c in store.read_checkpoints(connection, source.label).items()
    }


def one_batch(
    connection: sa.Connection,
    source: Source,
    settings: Settings,
    resident: Resident | None = None,
) -> tuple[SourceBatch | None, Counters, int]:
    """Read and fold one batch in the caller's locked transaction; None when caught up.

    Its ledger, anomalies, quarantine and checkpoints are written now; its rows go to
    `resident`, written when the caller flushes it (without one, before returning).
    """
    own = resident is None
    if resident is None:
        resident = Resident()
    checkpoints = resident.checkpoints
    if checkpoints is None:
        checkpoints = store.read_checkpoints(connection, source.label)
        if settings.projectors is not None:
            checkpoints = {k: v for k, v in checkpoints.items() if k in settings.projectors}
        resident.checkpoints = checkpoints
    cursors = {name: source.cursor(c.position, c.source_state) for name, c in checkpoints.items()}
    start = checkpoints[min(cursors, key=cursors.__getitem__)]
    start_cursor = source.cursor(start.position, start.source_state)
    if source.kind != "ndjson":
        resident.settle()  # the source reads through the connection
    batch = source.read(start.position, start.source_state, settings.batch_size, connection)
    if not batch.advanced:
        return None, Counters(), start.position

    events: list[Event] = []
    quarantined: list[Invalid] = []
    counters = Counters(read=0)
    # Projectors that stand at the batch's start take every line of it (the usual case).
    aligned = all(cursor == start_cursor for cursor in cursors.values())
    for index, (position, line) in enumerate(batch.lines):
        item = decode(position, line, strict=settings.strict)
        if isinstance(item, Event):
            name = item.family.name
            if name in cursors and (aligned or batch.cursor(index) > cursors[name]):
                events.append(item)
        else:  # every line a source returns lies after the batch's start
            counters.read += 1
            if isinstance(item, Unknown):
                counters.unknown += 1
            else:
                counters.quarantined += 1
                quarantined.append(item)

    state = resident.pending()
    resident.load(connection, state, events)
    triples = [idempotency_key(e) for e in events]  # each event's, None without a key
    keys = [k for k in triples if k is not None]
    seen_ids, seen_keys = resident.seen_before(connection, [e.event_id for e in events], keys)
    folder = Folder(state, settings.version_mode, source.label, seen_ids, seen_keys, counters)
    last_ids: dict[str, str] = {}
    counters.read += len(events)
    for event, key in zip(events, triples, strict=True):
        folder.apply(event, key)
        last_ids[event.family.name] = event.event_id
    newest = max(map(_OCCURRED_AT, events), default=None)
    resident.absorb(state)

    now = utc_now()
    ledger, anomalies, label = folder.ledger, folder.anomalies, source.label
    resident.submit(
        lambda: store.write_records(connection, ledger, anomalies, quarantined, label, now)
    )
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
            resident.moved.add(name)
    if own:
        try:
            resident.flush(connection)
        finally:
            resident.close()
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
