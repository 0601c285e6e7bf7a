"""SQLite's bulk reads and writes: one statement per table, keys passed as one JSON array."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from projections.dialect.rows import (
    driver_cursor,
    json_columns,
    parse_json,
    values_writer,
    writer,
)


def fetch_rows(
    connection: sa.Connection, table: sa.Table, keys: Sequence[Any]
) -> list[dict[str, Any]]:
    """The rows of `table` whose primary key is among `keys` (tuples for composite keys)."""
    columns = [c.name for c in table.columns]
    key_columns = [c.name for c in table.primary_key.columns]
    if len(key_columns) == 1:
        where = f"{key_columns[0]} IN (SELECT value FROM json_each(?))"
    else:
        picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(key_columns)))
        where = f"({', '.join(key_columns)}) IN (SELECT {picks} FROM json_each(?))"
    cursor = driver_cursor(connection)
    cursor.execute(
        f"SELECT {', '.join(columns)} FROM {table.name} WHERE {where}",
        (orjson.dumps(list(keys)).decode(),),
    )
    json_at = json_columns(table, columns)
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(columns, values, strict=True))
        for index in json_at:
            row[columns[index]] = parse_json(values[index])
        rows.append(row)
    return rows


def fetch_seen(
    connection: sa.Connection, event_ids: Sequence[str], triples: Sequence[tuple[str, str, str]]
) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Event ids and (projector, aggregate, idempotency key) triples already in the ledger."""
    cursor = driver_cursor(connection)
    cursor.execute(
        "SELECT event_id FROM processed_events WHERE event_id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(list(event_ids)).decode(),),
    )
    ids = {row[0] for row in cursor.fetchall()}
    found: set[tuple[str, str, str]] = set()
    if triples:
        cursor.execute(
            "SELECT projector, aggregate_id, idempotency_key FROM processed_events "
            "WHERE idempotency_key IS NOT NULL "  # the index holds only these rows
            "AND (projector, aggregate_id, idempotency_key) IN (SELECT json_extract(value, "
            "'$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?))",
            (orjson.dumps(list(triples)).decode(),),
        )
        found = {(a, b, c) for a, b, c in cursor.fetchall()}
    return ids, found


def write_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, upsert: bool
) -> None:
    """Insert rows (replacing every column of existing keys when `upsert`)."""
    if not rows:
        return
    columns = tuple(c.name for c in table.columns if not _generated(c, rows[0]))
    convert = writer(table, columns, "sqlite")
    _insert(connection, table, columns, [convert(row) for row in rows], upsert=upsert)


def write_values(
    connection: sa.Connection, table: sa.Table, rows: Iterable[Sequence[Any]], *, upsert: bool
) -> None:
    """Like write_rows, for rows given as values in the table's column order (at least one)."""
    columns = tuple(c.name for c in table.columns)
    convert = values_writer(table, "sqlite")
    _insert(connection, table, columns, map(convert, rows), upsert=upsert)


# Rows per statement of `append_values`: bounds the JSON document each one builds.
_APPEND_CHUNK = 1000


def append_values(
    connection: sa.Connection, table: sa.Table, rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows with one statement per thousand: they travel as one JSON array.

    executemany binds each row in Python, so a writer thread must take the interpreter's
    lock back between rows, which the main thread holds while it folds (up to the switch
    interval each time). Here SQLite reads the rows out of the array itself, in C.
    """
    columns = tuple(c.name for c in table.columns)
    convert = values_writer(table, "sqlite")
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {picks} FROM json_each(?)"
    cursor = driver_cursor(connection)
    for start in range(0, len(rows), _APPEND_CHUNK):
        chunk = [convert(row) for row in rows[start : start + _APPEND_CHUNK]]
        cursor.execute(statement, (orjson.dumps(chunk).decode(),))


def _insert(
    connection: sa.Connection,
    table: sa.Table,
    columns: tuple[str, ...],
    rows: Iterable[Sequence[Any]],
    *,
    upsert: bool,
) -> None:
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    if upsert:
        keys = [c.name for c in table.primary_key.columns]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        statement += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    driver_cursor(connection).executemany(statement, rows)


def _generated(column: sa.Column[Any], sample: dict[str, Any]) -> bool:
    """An autoincrement id the rows do not carry."""
    return column.primary_key and column.name not in sample


def update_copies(
    connection: sa.Connection,
    child: str,
    reference: str,
    columns: Sequence[str],
    values: Sequence[tuple[Any, ...]],
) -> None:
    """Set child columns from (reference value, *column values) rows where they differ."""
    if not values:
        return
    names = ["ref", *(f"v{i}" for i in range(len(columns)))]
    cursor = driver_cursor(connection)
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS copies_{len(columns)} "
        f"(ref TEXT PRIMARY KEY, {', '.join(f'{n} TEXT' for n in names[1:])})"
    )
    cursor.execute(f"DELETE FROM copies_{len(columns)}")
    cursor.executemany(
        f"INSERT OR REPLACE INTO copies_{len(columns)} VALUES ({', '.join('?' for _ in names)})",
        values,
    )
    sets = ", ".join(f"{c} = source.v{i}" for i, c in enumerate(columns))
    differs = " OR ".join(f"{child}.{c} IS NOT source.v{i}" for i, c in enumerate(columns))
    cursor.execute(
        f"UPDATE {child} SET {sets} FROM copies_{len(columns)} AS source "
        f"WHERE {child}.{reference} = source.ref AND ({differs})"
    )
