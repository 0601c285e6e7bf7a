"""Reads what a batch needs and writes what it produced, inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from projections import dialect
from projections.events import Invalid
from projections.fold import IdempotencyKey, LedgerEntry
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
    fingerprint: str | None = None


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
            row.fingerprint,
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
                "fingerprint": c.fingerprint,
            }
            for c in checkpoints
        ],
    )


def seen_before(
    connection: sa.Connection, event_ids: Sequence[str], keys: Sequence[IdempotencyKey]
) -> tuple[set[str], set[IdempotencyKey]]:
    """Which event ids and idempotency keys already counted in earlier batches."""
    return dialect.fetch_seen(connection, sorted(set(event_ids)), sorted(set(keys)))


def write_records(
    connection: sa.Connection,
    ledger: Sequence[LedgerEntry],
    anomalies: Sequence[dict[str, Any]],
    quarantined: Sequence[Invalid],
    source: str,
    now: datetime,
) -> None:
    """Append the batch's ledger, anomalies and quarantine (its rows wait for the flush)."""
    if ledger:
        dialect.append_values(connection, _PROCESSED, ledger)
    dialect.write_rows(connection, _ANOMALIES, anomalies, upsert=False)
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
