"""The database event log, read so that no committed event is ever skipped.

PostgreSQL hands out `position` at insert time, not at commit time: a reader that
remembered the highest position it saw would skip a row that commits later with
a lower position. Each row therefore carries its writer's transaction id
(`tx xid8 DEFAULT pg_current_xact_id()`), and the reader reads in (tx, position)
order only rows below a horizon: the oldest transaction of this database that is
still running when the read's snapshot is taken (else the snapshot's xmax). Every
transaction below the horizon has ended, so no row can become visible later below
the cursor; a transaction that starts later gets a larger id than the horizon.

This is `tx < pg_snapshot_xmin(pg_current_snapshot())` with one refinement:
transaction ids are cluster-wide, and a transaction that pg_stat_activity shows
running in *another* database cannot write this table, so it does not hold the
reader back. Any running transaction not positively known to belong elsewhere
(no row in pg_stat_activity, insufficient privileges, a prepared transaction)
still does. SQLite has one writer at a time: commit order is position order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.errors import ConfigurationError, SourceMismatchError
from projections.sources import SourceBatch
from projections.tables import TABLES

# The horizon: the oldest running transaction not known to belong to another database.
HORIZON = """
    WITH snapshot AS (SELECT pg_current_snapshot() AS s),
    elsewhere AS (
        SELECT backend_xid::text::bigint AS xid32 FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
    ),
    horizon AS (
        SELECT coalesce(
            (SELECT min(x) FROM snapshot, pg_snapshot_xip(snapshot.s) AS x
             WHERE x::text::bigint % 4294967296 NOT IN (SELECT xid32 FROM elsewhere)),
            (SELECT pg_snapshot_xmax(s) FROM snapshot)
        ) AS tx
    )
"""
_POSTGRES_READ = sa.text(
    HORIZON
    + """
    SELECT position, event_log.tx::text::bigint AS tx, event_id, event::text AS event
    FROM event_log, horizon
    WHERE (event_log.tx, position) > (CAST(CAST(:tx AS text) AS xid8), :position)
      AND event_log.tx < horizon.tx
    ORDER BY event_log.tx, position
    LIMIT :limit
    """
)
_SQLITE_READ = sa.text(
    """
    SELECT position, 0 AS tx, event_id, CAST(event AS TEXT) AS event
    FROM event_log
    WHERE position > :position
    ORDER BY position
    LIMIT :limit
    """
)


class EventLogSource:
    """Rows of `event_log`; position = the row's global position; cursor = (tx, position)."""

    kind = "db"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.label = "db:event_log"
        self.postgres = engine.dialect.name == "postgresql"
        self.until: tuple[int, int] | None = None  # stop after this cursor (verify)

    def cursor(self, position: int, state: dict[str, Any]) -> tuple[int, int]:
        """Where a checkpoint stands in read order."""
        return (int(state.get("tx", 0)), position) if position else (0, 0)

    def _require_table(self, connection: sa.Connection) -> None:
        if not sa.inspect(connection).has_table("event_log"):
            url = self.engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"{url} has no event_log table: run `projections migrate` there, "
                "or `projections import FILE` to fill it"
            )

    def verify(self, position: int, state: dict[str, Any]) -> None:
        """Refuse a checkpoint written from another source or a log that lost its rows."""
        with self.engine.connect() as connection:
            self._require_table(connection)
            if position == 0:
                return
            if state.get("kind") != self.kind:
                raise SourceMismatchError(
                    "the checkpoint was written from an NDJSON file, not the database event "
                    "log; run `projections rebuild --source db`"
                )
            found = connection.execute(
                sa.text("SELECT event_id FROM event_log WHERE position = :p"), {"p": position}
            ).scalar_one_or_none()
        if found != state.get("event_id"):
            raise SourceMismatchError(
                f"event_log no longer holds event {state.get('event_id')!r} at position "
                f"{position}: the log was emptied or replaced. "
                "Run `projections rebuild --source db` to start over"
            )

    def read(
        self,
        position: int,
        state: dict[str, Any],
        limit: int,
        connection: sa.Connection | None = None,
    ) -> SourceBatch:
        """Up to `limit` committed rows after the cursor, in the caller's transaction if shared."""
        if connection is not None and connection.engine is self.engine:
            return self._read(connection, position, state, limit)
        with self.engine.connect().execution_options(read_only=True) as own:
            return self._read(own, position, state, limit)

    def _read(
        self, connection: sa.Connection, position: int, state: dict[str, Any], limit: int
    ) -> SourceBatch:
        tx, after = self.cursor(position, state)
        if self.postgres:
            query, params = _POSTGRES_READ, {"tx": tx, "position": after, "limit": limit}
        else:
            query, params = _SQLITE_READ, {"position": after, "limit": limit}
        rows = connection.execute(query, params).all()
        if self.until is not None:
            rows = [r for r in rows if (int(r.tx), int(r.position)) <= self.until]
        if not rows:
            return SourceBatch([], position, state, advanced=False)
        lines = [(row.position, row.event.encode("utf-8", "surrogatepass")) for row in rows]
        cursors = [(int(row.tx), int(row.position)) for row in rows]
        last = rows[-1]
        new_state = {"kind": self.kind, "tx": int(last.tx), "event_id": last.event_id}
        return SourceBatch(lines, int(last.position), new_state, cursors=cursors)

    def head(self) -> int | None:
        """The highest position stored (committed or not yet readable)."""
        with self.engine.connect() as connection:
            value = connection.execute(sa.text("SELECT max(position) FROM event_log")).scalar()
        return int(value) if value is not None else 0

    def backlog(self, position: int, state: dict[str, Any]) -> tuple[int, datetime | None]:
        """Rows stored after the cursor (readable or held back), and the newest occurred_at."""
        with self.engine.connect() as connection:
            newest = connection.execute(
                sa.select(sa.func.max(TABLES["event_log"].c.occurred_at))
            ).scalar()
        return self.pending(position, state), newest

    def pending(self, position: int, state: dict[str, Any]) -> int:
        """How many stored rows lie after the cursor (readable or held back)."""
        tx, after = self.cursor(position, state)
        with self.engine.connect() as connection:
            if self.postgres:
                query = (
                    "SELECT count(*) FROM event_log "
                    "WHERE (tx, position) > (CAST(CAST(:tx AS text) AS xid8), :p)"
                )
            else:
                query = "SELECT count(*) FROM event_log WHERE position > :p"
            return int(connection.execute(sa.text(query), {"tx": tx, "p": after}).scalar_one())

    def close(self) -> None:
        """Nothing to release: the engine belongs to the caller."""
