"""`status`: where each projector stands and what the read model holds."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import migrate as migrations
from projections.fingerprint import current as current_fingerprints
from projections.lag import UNKNOWN, Lag, lag_of, source_for
from projections.runs import last_run
from projections.sources.eventlog import HORIZON
from projections.store import PROJECTORS, Checkpoint, read_checkpoints
from projections.tables import ENTITY_TABLES, TABLES


def read_status(engine: Engine, log_engine: Engine | None = None) -> dict[str, Any]:
    """Checkpoints with lag, row counts, quarantine and anomaly counts, the last run."""
    revision = migrations.current_revision(engine)
    head = migrations.head_revision()
    status: dict[str, Any] = {
        "database": engine.url.render_as_string(hide_password=True),
        "schema_revision": revision,
        "schema_current": revision == head,
        "projectors": [],
        "tables": {},
        "quarantined": {"total": 0, "by_reason": {}},
        "anomalies": {"total": 0, "by_kind": {}},
        "last_run": None,
    }
    if revision is None:
        return status
    with engine.connect() as connection:
        checkpoints = read_checkpoints(connection, "")
        status["last_run"] = last_run(connection)
    lags = _lags(checkpoints, log_engine or engine)
    code = current_fingerprints()
    changed = set(changed_projectors(checkpoints))
    with engine.connect() as connection:
        status["projectors"] = [
            {
                "projector": name,
                "source": checkpoints[name].source or None,
                "position": checkpoints[name].position,
                "last_event_id": checkpoints[name].last_event_id,
                "last_occurred_at": _iso(checkpoints[name].last_occurred_at),
                "updated_at": _iso(checkpoints[name].updated_at),
                "fingerprint": checkpoints[name].fingerprint,
                "code_fingerprint": code[name],
                "rebuild_needed": name in changed,
                **lags[name].as_dict(),
            }
            for name in PROJECTORS
        ]
        for table in ENTITY_TABLES:
            status["tables"][str(table.name)] = _count(connection, table)
        status["quarantined"] = _grouped(connection, TABLES["quarantined_events"], "reason")
        status["anomalies"] = _grouped(connection, TABLES["event_anomalies"], "kind")
        status["event_log"] = event_log_status(connection)
    return status


_HELD_BACK = sa.text(
    HORIZON
    + """
    SELECT count(*) AS held, max(event_log.tx)::text::bigint AS newest
    FROM event_log, horizon WHERE event_log.tx >= horizon.tx
    """
)
_BLOCKERS = sa.text(
    """
    SELECT pid, application_name, state,
           extract(epoch FROM now() - xact_start)::float AS transaction_age_seconds
    FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
      AND datname IS NOT DISTINCT FROM current_database()
      AND age(backend_xid) >= age(CAST(CAST(:newest % 4294967296 AS text) AS xid))
    ORDER BY xact_start
    LIMIT 10
    """
)


def event_log_status(connection: sa.Connection) -> dict[str, Any]:
    """Rows in event_log and, on PostgreSQL, the transactions holding newer rows back."""
    rows = int(connection.execute(sa.text("SELECT count(*) FROM event_log")).scalar_one())
    head = connection.execute(sa.text("SELECT max(position) FROM event_log")).scalar()
    result: dict[str, Any] = {"rows": rows, "head": head, "held_back": 0, "waiting_for": []}
    if connection.dialect.name != "postgresql" or not rows:
        return result
    held = connection.execute(_HELD_BACK).one()
    result["held_back"] = int(held.held)
    if held.held:
        result["waiting_for"] = [
            dict(row._mapping)
            for row in connection.execute(_BLOCKERS, {"newest": int(held.newest)})
        ]
    return result


def changed_projectors(checkpoints: dict[str, Checkpoint]) -> list[str]:
    """Projectors whose rows were built by other handlers or table definitions than these."""
    code = current_fingerprints()
    return [
        name
        for name, checkpoint in checkpoints.items()
        if checkpoint.position and checkpoint.fingerprint != code[name]
    ]


def _lags(checkpoints: dict[str, Checkpoint], log_engine: Engine) -> dict[str, Lag]:
    """Each projector's lag; projectors at the same place share one look at the source."""
    found: dict[tuple[str, int], Lag] = {}
    result: dict[str, Lag] = {}
    for name, checkpoint in checkpoints.items():
        key = (checkpoint.source, checkpoint.position)
        if key not in found:
            source = source_for(checkpoint.source, log_engine) if checkpoint.source else None
            if source is None:
                found[key] = UNKNOWN
            else:
                try:
                    found[key] = lag_of(source, checkpoint)
                except sa.exc.SQLAlchemyError:
                    found[key] = UNKNOWN
                finally:
                    source.close()
        result[name] = found[key]
    return result


def _count(connection: sa.Connection, table: sa.Table) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _grouped(connection: sa.Connection, table: sa.Table, column: str) -> dict[str, Any]:
    rows = connection.execute(
        sa.select(table.c[column], sa.func.count())
        .group_by(table.c[column])
        .order_by(table.c[column])
    ).all()
    by = {str(row[0]): int(row[1]) for row in rows}
    key = "by_reason" if column == "reason" else "by_kind"
    return {"total": sum(by.values()), key: by}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def lag_problems(
    status: dict[str, Any], max_events: int | None, max_seconds: float | None
) -> list[str]:
    """Why the read model is unhealthy for these limits (an unknown lag counts as too much)."""
    problems: list[str] = []
    if max_events is None and max_seconds is None:
        return problems
    if status["schema_revision"] is None:
        return ["no schema: the read model was never built"]
    for p in status["projectors"]:
        events, seconds = p["lag_events"], p["lag_seconds"]
        if max_events is not None and (events is None or events > max_events):
            shown = "unknown" if events is None else events
            problems.append(f"{p['projector']} lag {shown} events > {max_events}")
        if max_seconds is not None and (seconds is None or seconds > max_seconds):
            shown = "unknown" if seconds is None else f"{seconds:.0f}"
            problems.append(f"{p['projector']} lag {shown} s > {max_seconds:g}")
    return problems
