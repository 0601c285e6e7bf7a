"""The only module that knows PostgreSQL and SQLite differ: upserts, bulk writes, locks."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

# SQLite's limit on bound parameters is 32,766 on current builds; stay well below.
SQLITE_IN_CHUNK = 500
POSTGRES_IN_CHUNK = 5_000


def in_chunk(connection: sa.Connection) -> int:
    """How many keys one IN (...) lookup may carry."""
    return POSTGRES_IN_CHUNK if connection.dialect.name == "postgresql" else SQLITE_IN_CHUNK


def upsert(connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, replacing every non-key column of rows whose key exists."""
    if not rows:
        return
    module: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = module.insert(table)
    keys = [c.name for c in table.primary_key.columns]
    statement = statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    connection.execute(statement, list(rows))


def insert_ignoring_conflicts(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert rows, skipping any that would break a unique constraint."""
    if not rows:
        return
    module: Any = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(module.insert(table).on_conflict_do_nothing(), list(rows))


def lock_writers(connection: sa.Connection, name: str = "projections") -> None:
    """Serialise writers of the read model for the rest of the transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(name))))
    # SQLite: BEGIN IMMEDIATE (see db.py) already holds the database's write lock.


def try_lock_writers(connection: sa.Connection, name: str = "projections") -> bool:
    """Like lock_writers, but give up at once when another writer holds the lock."""
    if connection.dialect.name == "postgresql":
        return bool(
            connection.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(lock_key(name)))
            ).scalar_one()
        )
    return True


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    return zlib.crc32(b"projections:" + name.encode()) - (1 << 31)
