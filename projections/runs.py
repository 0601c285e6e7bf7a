"""The run log: one row per run, catch-up tick or failure, for `status` and health checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.events import utc_now
from projections.projector import RunResult
from projections.tables import TABLES

_RUNS = TABLES["projection_runs"]
KEEP = 1_000  # the newest runs kept; older ones are pruned as new ones arrive


def record(
    engine: Engine,
    command: str,
    source: str,
    started_at: datetime,
    result: RunResult | None,
    error: str | None = None,
) -> None:
    """Store one finished run (ok, interrupted or failed) and prune the oldest."""
    outcome = "failed" if error else ("interrupted" if result and result.interrupted else "ok")
    counters: dict[str, Any] = result.summary() if result is not None else {}
    with engine.begin() as connection:
        connection.execute(
            sa.insert(_RUNS).values(
                command=command,
                source=source,
                started_at=started_at,
                finished_at=utc_now(),
                result=outcome,
                counters=counters,
                error=error,
            )
        )
        newest = connection.execute(
            sa.select(_RUNS.c.id).order_by(_RUNS.c.id.desc()).offset(KEEP).limit(1)
        ).scalar()
        if newest is not None:
            connection.execute(sa.delete(_RUNS).where(_RUNS.c.id <= newest))


def last_run(connection: sa.Connection) -> dict[str, Any] | None:
    """The newest run, or None before the first."""
    row = connection.execute(sa.select(_RUNS).order_by(_RUNS.c.id.desc()).limit(1)).mappings()
    found = row.first()
    if found is None:
        return None
    return {
        "command": found["command"],
        "source": found["source"],
        "started_at": found["started_at"].isoformat(),
        "finished_at": found["finished_at"].isoformat() if found["finished_at"] else None,
        "result": found["result"],
        "counters": found["counters"],
        "error": found["error"],
    }
