"""Engines for SQLite and PostgreSQL, and the one place driver errors become ours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from projections.errors import DatabaseUnavailableError

APPLICATION_NAME = "projections"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(url: URL, *, search_path: str | None = None) -> Engine:
    """An engine whose sessions speak UTC and whose transactions start as writers on SQLite.

    `search_path` (PostgreSQL) makes unqualified table names resolve to another schema
    first: the shadow schema of a rebuild or the scratch schema of `verify`.
    """
    options: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "json_deserializer": orjson.loads,
    }
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    settings = "-c timezone=UTC"
    if search_path is not None:
        settings += f" -c search_path={search_path},public"
    connect_args = {"application_name": APPLICATION_NAME, "options": settings}
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, **options)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event start transactions, so reads and writes share one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # IMMEDIATE takes the write lock up front: two runs never interleave a batch.
    # Readers that only look (read_only=True) must not wait for writers.
    read_only = connection.get_execution_options().get("read_only", False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn connection failures into DatabaseUnavailableError with a readable message."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        if exc.connection_invalidated or _is_connect_failure(exc):
            safe = url.render_as_string(hide_password=True)
            raise DatabaseUnavailableError(
                f"cannot use database {safe}: {_first_line(exc.orig)}"
            ) from exc
        raise


def _is_connect_failure(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(
        needle in text
        for needle in (
            "connection",
            "could not connect",
            "unable to open database",
            "does not exist",
            "password authentication",
            "server closed",
            "terminating connection",
        )
    )


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error is not None and str(error) else "failed"
