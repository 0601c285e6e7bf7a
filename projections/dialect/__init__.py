"""The only module that knows PostgreSQL and SQLite differ: upserts, bulk writes, locks."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from projections.dialect import lite as _sqlite
from projections.dialect import pg as _postgres


def _bulk(connection: sa.Connection) -> Any:
    return _postgres if connection.dialect.name == "postgresql" else _sqlite


def fetch_rows(
    connection: sa.Connection, table: sa.Table, keys: Sequence[Any]
) -> list[dict[str, Any]]:
    """The rows of `table` whose primary key is among `keys`, as driver values."""
    if not keys:
        return []
    rows: list[dict[str, Any]] = _bulk(connection).fetch_rows(connection, table, keys)
    return rows


def set_search_path(connection: sa.Connection, schemas: str) -> None:
    """Resolve unqualified table names in `schemas` until the transaction ends (PostgreSQL)."""
    _postgres.set_search_path(connection, schemas)


def fetch_seen(
    connection: sa.Connection, event_ids: Sequence[str], triples: Sequence[tuple[str, str, str]]
) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Event ids and idempotency triples already in the ledger."""
    if not event_ids and not triples:
        return set(), set()
    found: tuple[set[str], set[tuple[str, str, str]]] = _bulk(connection).fetch_seen(
        connection, event_ids, triples
    )
    return found


def write_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, upsert: bool
) -> None:
    """Bulk insert (or upsert) rows given as dicts of column values."""
    _bulk(connection).write_rows(connection, table, rows, upsert=upsert)


def write_values(
    connection: sa.Connection, table: sa.Table, rows: Iterable[Sequence[Any]], *, upsert: bool
) -> None:
    """Bulk insert (or upsert) rows given as values in the table's column order (at least one).

    `rows` may be an iterator: each row is made as it is written, not all at once.
    """
    _bulk(connection).write_values(connection, table, rows, upsert=upsert)


def append_values(
    connection: sa.Connection, table: sa.Table, rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows given as values in the table's column order, for a background write.

    Like `write_values` without upsert. On SQLite the rows go as JSON arrays that SQLite
    reads itself, with the interpreter's lock released, so a write on another thread does
    not take turns with the fold on the main one row by row; PostgreSQL gets its COPY.
    """
    if rows:
        _bulk(connection).append_values(connection, table, rows)


def update_copies(
    connection: sa.Connection,
    child: str,
    reference: str,
    columns: Sequence[str],
    values: Sequence[tuple[Any, ...]],
) -> None:
    """Copy changed parent values into the child rows that reference them."""
    _bulk(connection).update_copies(connection, child, reference, columns, values)


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


WRITERS = "projections"  # the lock every writer of the live read model takes


def lock_writers(connection: sa.Connection, name: str = WRITERS) -> None:
    """Serialise writers of the read model for the rest of the transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(name))))
    # SQLite: BEGIN IMMEDIATE (see db.py) already holds the database's write lock.


def try_lock_writers(connection: sa.Connection, name: str = WRITERS) -> bool:
    """Like lock_writers, but give up at once when another writer holds the lock."""
    if connection.dialect.name == "postgresql":
        return bool(
            connection.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(lock_key(name)))
            ).scalar_one()
        )
    return True


class Claim:
    """A name this process holds (see `claim`); `held` tells whether it still does."""

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check

    def held(self) -> bool:
        """True while the claim is this process's: its session (or lock file) is still there."""
        return self._check()


@contextmanager
def claim(engine: sa.Engine, name: str) -> Iterator[Claim | None]:
    """Hold `name` for this process until the block ends; yields None if another holds it.

    Unlike the writers' lock, it outlives transactions: a rebuild holds its shadow from
    preparing it to swapping it in. PostgreSQL: a session-level advisory lock on a
    connection of its own, released with that session (so a session that ends, killed
    or timed out, loses it: `Claim.held` says so). SQLite: an exclusive `flock` on a
    file beside the database, released with the process.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            yield from _session_claim(connection, lock_key(f"claim:{name}"))
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield Claim(lambda: True)  # no file: no other process can share this database
        return
    yield from _file_claim(Path(f"{database}.{name}.lock"))


def _session_claim(connection: sa.Connection, key: int) -> Iterator[Claim | None]:
    if (connection.dialect.server_version_info or (0,)) >= (14,):
        connection.exec_driver_sql("SET idle_session_timeout = 0")  # it sits idle for hours
    held = connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
    connection.commit()  # the lock is the session's: no transaction stays open
    if not held:
        yield None
        return

    def alive() -> bool:
        try:
            connection.execute(sa.select(sa.literal(1)))
            connection.commit()
        except sa.exc.SQLAlchemyError:
            return False
        return True

    try:
        yield Claim(alive)
    finally:
        try:
            connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            connection.commit()
        except sa.exc.SQLAlchemyError:
            # Never return to the pool a session that may still hold the lock.
            connection.invalidate()


def _file_claim(path: Path) -> Iterator[Claim | None]:
    import fcntl  # POSIX only, as is the SQLite write-ahead log this runs beside

    descriptor = _locked_file(path, fcntl)
    if descriptor is None:
        yield None
        return

    def ours() -> bool:  # removed, or replaced by another process's file: no longer held
        try:
            return os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            return False

    try:
        yield Claim(ours)
    finally:
        try:
            if ours():
                os.remove(path)  # still locked: whoever opens the path next makes a new file
        finally:
            os.close(descriptor)


def _locked_file(path: Path, fcntl: Any) -> int | None:
    """A descriptor of `path` under an exclusive flock, or None if another process has it."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError:
            os.close(descriptor)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # its holder removed the file as we opened it: take a new one


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    return zlib.crc32(b"projections:" + name.encode()) - (1 << 31)


def append_event_log(
    connection: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> int:
    """Append rows to event_log in order, skipping event_ids already there; returns how many."""
    if not rows:
        return 0
    if connection.dialect.name != "postgresql":
        before = connection.exec_driver_sql("SELECT total_changes()").scalar_one()
        connection.execute(sqlite.insert(table).on_conflict_do_nothing(), list(rows))
        after = connection.exec_driver_sql("SELECT total_changes()").scalar_one()
        return int(after) - int(before)
    names = ", ".join(columns)
    connection.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS event_log_import (seq bigint, event_id text, "
        "event_name text, aggregate_type text, aggregate_id text, occurred_at timestamptz, "
        "version bigint, idempotency_key text, event jsonb) ON COMMIT DROP"
    )
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY event_log_import (seq, {names}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for seq, row in enumerate(rows):
            values = [row[c] for c in columns]
            values[-1] = orjson.dumps(values[-1]).decode()
            copy.write_row([seq, *values])
    inserted = connection.exec_driver_sql(
        f"INSERT INTO event_log ({names}) SELECT {names} FROM event_log_import "
        "ORDER BY seq ON CONFLICT (event_id) DO NOTHING"
    ).rowcount
    connection.exec_driver_sql("TRUNCATE event_log_import")
    return int(inserted)
