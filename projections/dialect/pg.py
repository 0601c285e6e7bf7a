"""PostgreSQL's bulk reads and writes: arrays for lookups, COPY for writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from projections.dialect.rows import driver_cursor, writer


def fetch_rows(
    connection: sa.Connection, table: sa.Table, keys: Sequence[Any]
) -> list[dict[str, Any]]:
    """The rows of `table` whose primary key is among `keys` (tuples for composite keys)."""
    columns = [c.name for c in table.columns]
    key_columns = [c.name for c in table.primary_key.columns]
    cursor = driver_cursor(connection)
    if len(key_columns) == 1:
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {table.name} WHERE {key_columns[0]} = ANY(%s)",
            (list(keys),),
        )
    else:
        arrays = [[key[i] for key in keys] for i in range(len(key_columns))]
        unnest = ", ".join("%s::text[]" for _ in key_columns)
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {table.name} "
            f"WHERE ({', '.join(key_columns)}) IN (SELECT * FROM unnest({unnest}))",
            arrays,
        )
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


def fetch_seen(
    connection: sa.Connection, event_ids: Sequence[str], triples: Sequence[tuple[str, str, str]]
) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Event ids and (projector, aggregate, idempotency key) triples already in the ledger."""
    cursor = driver_cursor(connection)
    cursor.execute(
        "SELECT event_id FROM processed_events WHERE event_id = ANY(%s)", (list(event_ids),)
    )
    ids = {row[0] for row in cursor.fetchall()}
    found: set[tuple[str, str, str]] = set()
    if triples:
        cursor.execute(
            "SELECT projector, aggregate_id, idempotency_key FROM processed_events "
            "WHERE (projector, aggregate_id, idempotency_key) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
            [[t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]],
        )
        found = {(a, b, c) for a, b, c in cursor.fetchall()}
    return ids, found


def write_rows(
    connection: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, upsert: bool
) -> None:
    """COPY rows in; with `upsert`, through a temporary table merged with ON CONFLICT."""
    if not rows:
        return
    columns = tuple(c.name for c in table.columns if not (c.primary_key and c.name not in rows[0]))
    convert = writer(table, columns, "postgresql")
    names = ", ".join(columns)
    cursor = driver_cursor(connection)
    target = table.name
    if upsert:
        target = f"pending_{table.name}"
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {target} "
            f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(convert(row))
    if upsert:
        keys = [c.name for c in table.primary_key.columns]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        cursor.execute(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {target} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )
        cursor.execute(f"TRUNCATE {target}")


def update_copies(
    connection: sa.Connection,
    child: str,
    reference: str,
    columns: Sequence[str],
    values: Sequence[tuple[Any, ...]],
) -> None:
    """Set child columns from (reference value, *column values) pairs where they differ."""
    if not values:
        return
    arrays = [[v[i] for v in values] for i in range(len(columns) + 1)]
    names = ["ref", *(f"v{i}" for i in range(len(columns)))]
    unnest = ", ".join("%s::text[]" for _ in names)
    sets = ", ".join(f"{c} = source.v{i}" for i, c in enumerate(columns))
    differs = " OR ".join(
        f"{child}.{c} IS DISTINCT FROM source.v{i}" for i, c in enumerate(columns)
    )
    driver_cursor(connection).execute(
        f"UPDATE {child} SET {sets} FROM (SELECT * FROM unnest({unnest})) "
        f"AS source({', '.join(names)}) WHERE {child}.{reference} = source.ref AND ({differs})",
        arrays,
    )
