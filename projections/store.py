"""Reads what a batch needs and writes what it produced, inside the caller's transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from projections import dialect
from projections.batch import Key, Pending
from projections.events import Invalid
from projections.fold import IdempotencyKey, parent_changes
from projections.schema import FAMILIES
from projections.tables import ENTITY_TABLES, TABLES

PROJECTORS: tuple[str, ...] = tuple(f.name for f in FAMILIES)

_CHECKPOINTS = TABLES["projection_checkpoints"]
_PROCESSED = TABLES["processed_events"]
_ANOMALIES = TABLES["event_anomalies"]
_QUARANTINE = TABLES["quarantined_events"]


@dataclass
class Checkpoint:
    """How far one projector has read, and the source state to resume from."""

    projector: str
    source: str
    position: int = 0
    last_event_id: str | None = None
    source_state: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None
    last_occurred_at: datetime | None = None


def read_checkpoints(connection: sa.Connection, source: str) -> dict[str, Checkpoint]:
    """Every projector's checkpoint; projectors that never ran start at position 0."""
    found = {
        row.projector: Checkpoint(
            row.projector,
            row.source,
            row.position,
            row.last_event_id,
            dict(row.source_state or {}),
            row.updated_at,
            row.last_occurred_at,
        )
        for row in connection.execute(sa.select(_CHECKPOINTS))
    }
    return {name: found.get(name) or Checkpoint(name, source) for name in PROJECTORS}


def write_checkpoints(connection: sa.Connection, checkpoints: Iterable[Checkpoint]) -> None:
    """Upsert checkpoints (same transaction as the rows they cover)."""
    dialect.upsert(
        connection,
        _CHECKPOINTS,
        [
            {
                "projector": c.projector,
                "source": c.source,
                "position": c.position,
                "last_event_id": c.last_event_id,
                "source_state": c.source_state,
                "updated_at": c.updated_at,
                "last_occurred_at": c.last_occurred_at,
            }
            for c in checkpoints
        ],
    )


def load_rows(connection: sa.Connection, state: Pending, keys: Iterable[tuple[str, Key]]) -> None:
    """Bring the rows the batch will touch into `state`, recording the missing ones as None."""
    wanted: dict[str, set[Key]] = defaultdict(set)
    for name, wanted_key in keys:
        if not state.loaded(name, wanted_key):
            wanted[name].add(wanted_key)
    size = dialect.in_chunk(connection)
    for table_name, table_keys in wanted.items():
        table = TABLES[table_name]
        columns = list(table.primary_key.columns)
        target: Any = columns[0] if len(columns) == 1 else sa.tuple_(*columns)
        ordered = sorted(table_keys)
        for start in range(0, len(ordered), size):
            chunk = ordered[start : start + size]
            for row in connection.execute(sa.select(table).where(target.in_(chunk))).mappings():
                found = dict(row)
                key: Key = (
                    found[columns[0].name]
                    if len(columns) == 1
                    else (found[columns[0].name], found[columns[1].name])
                )
                state.remember(table_name, key, found)
        for missing in ordered:
            if not state.loaded(table_name, missing):
                state.remember(table_name, missing, None)


def seen_before(
    connection: sa.Connection, event_ids: Sequence[str], keys: Sequence[IdempotencyKey]
) -> tuple[set[str], set[IdempotencyKey]]:
    """Which event ids and idempotency keys already counted in earlier batches."""
    size = dialect.in_chunk(connection)
    ids: set[str] = set()
    unique_ids = sorted(set(event_ids))
    for start in range(0, len(unique_ids), size):
        chunk = unique_ids[start : start + size]
        ids.update(
            connection.execute(
                sa.select(_PROCESSED.c.event_id).where(_PROCESSED.c.event_id.in_(chunk))
            ).scalars()
        )
    found: set[IdempotencyKey] = set()
    unique_keys = sorted(set(keys))
    triple = sa.tuple_(
        _PROCESSED.c.projector, _PROCESSED.c.aggregate_id, _PROCESSED.c.idempotency_key
    )
    step = max(1, size // 3)
    for start in range(0, len(unique_keys), step):
        key_chunk = unique_keys[start : start + step]
        rows = connection.execute(
            sa.select(
                _PROCESSED.c.projector, _PROCESSED.c.aggregate_id, _PROCESSED.c.idempotency_key
            ).where(triple.in_(key_chunk))
        )
        found.update((r[0], r[1], r[2]) for r in rows)
    return ids, found


def write_batch(
    connection: sa.Connection,
    state: Pending,
    ledger: Sequence[dict[str, Any]],
    anomalies: Sequence[dict[str, Any]],
    quarantined: Sequence[Invalid],
    source: str,
    now: datetime,
) -> None:
    """Write the batch's rows, copies, ledger, anomalies and quarantine."""
    for table in ENTITY_TABLES:
        dialect.upsert(connection, table, state.changed_rows(table.name))
    _propagate(connection, state)
    if ledger:
        connection.execute(sa.insert(_PROCESSED), list(ledger))
    if anomalies:
        connection.execute(sa.insert(_ANOMALIES), list(anomalies))
    dialect.insert_ignoring_conflicts(
        connection,
        _QUARANTINE,
        [
            {
                "source": source,
                "position": q.position,
                "event_id": q.event_id,
                "event_name": q.event_name,
                "reason": q.reason,
                "message": q.message,
                "raw": q.raw,
                "quarantined_at": now,
            }
            for q in quarantined
        ],
    )


def _propagate(connection: sa.Connection, state: Pending) -> None:
    """Copy parents' changed values into child rows the batch did not load."""
    grouped: dict[tuple[str, str, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
    for child, reference, values in parent_changes(state):
        columns = tuple(sorted(k for k in values if k != "ref"))
        grouped[(child, reference, columns)].append(
            {"ref": values["ref"], **{f"v_{c}": values[c] for c in columns}}
        )
    for (child, reference, columns), params in grouped.items():
        table = TABLES[child]
        statement = (
            sa.update(table)
            .where(table.c[reference] == sa.bindparam("ref"))
            .where(sa.or_(*(table.c[c].is_distinct_from(sa.bindparam(f"v_{c}")) for c in columns)))
            .values({c: sa.bindparam(f"v_{c}") for c in columns})
        )
        connection.execute(statement, params)


def reset(connection: sa.Connection) -> None:
    """Empty every read-model table, the ledger, anomalies, quarantine and checkpoints."""
    names = [t.name for t in ENTITY_TABLES] + [
        "processed_events",
        "event_anomalies",
        "quarantined_events",
        "projection_checkpoints",
    ]
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("TRUNCATE " + ", ".join(names)))
    else:
        for name in names:
            connection.execute(sa.delete(TABLES[name]))
