"""PostgreSQL's bulk reads and writes: arrays for lookups, COPY for writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg import adapt, postgres, pq
from sqlalchemy.dialects import postgresql

from projections.dialect.rows import driver_cursor, values_writer, writer

# Keys travel as one JSON document (dumping a 10,000-element array parameter costs more).
# Lookups are never prepared: a generic plan made while a table was small (early in a
# rebuild's transaction) would keep scanning it whole as it grows.
_KEYS = "ANY(ARRAY(SELECT jsonb_array_elements_text(%s::text::jsonb)))"


def fetch_rows(
    connection: sa.Connection, table: sa.Table, keys: Sequence[Any]
) -> list[dict[str, Any]]:
    """The rows of `table` whose primary key is among `keys` (tuples for composite keys)."""
    columns = [c.name for c in table.columns]
    key_columns = [c.name for c in table.primary_key.columns]
    cursor = driver_cursor(connection)
    if len(key_columns) == 1:
        cursor.execute(
            f"SELECT {', '.join(columns)} FROM {table.name} WHERE {key_columns[0]} = {_KEYS}",
            (orjson.dumps(list(keys)).decode(),),
            prepare=False,
        )
        return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    on = " AND ".join(f"t.{name} = k->>{i}" for i, name in enumerate(key_columns))
    cursor.execute(
        f"SELECT {', '.join(f't.{c}' for c in columns)} "
        f"FROM jsonb_array_elements(%s::text::jsonb) AS k JOIN {table.name} AS t ON {on}",
        (orjson.dumps(list(keys)).decode(),),
        prepare=False,
    )
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


def fetch_seen(
    connection: sa.Connection, event_ids: Sequence[str], triples: Sequence[tuple[str, str, str]]
) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Event ids and (projector, aggregate, idempotency key) triples already in the ledger."""
    cursor = driver_cursor(connection)
    ids: set[str] = set()
    if event_ids:
        cursor.execute(
            f"SELECT event_id FROM processed_events WHERE event_id = {_KEYS}",
            (orjson.dumps(event_ids).decode(),),
            prepare=False,
        )
        ids = {row[0] for row in cursor.fetchall()}
    found: set[tuple[str, str, str]] = set()
    if triples:
        cursor.execute(
            "SELECT p.projector, p.aggregate_id, p.idempotency_key "
            "FROM jsonb_array_elements(%s::text::jsonb) AS k JOIN processed_events AS p "
            "ON p.projector = k->>0 AND p.aggregate_id = k->>1 AND p.idempotency_key = k->>2 "
            "AND p.idempotency_key IS NOT NULL",  # the index holds only these rows
            (orjson.dumps(triples).decode(),),
            prepare=False,
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
    _copy(connection, table, columns, map(convert, rows), upsert=upsert)


def write_values(
    connection: sa.Connection, table: sa.Table, rows: Iterable[Sequence[Any]], *, upsert: bool
) -> None:
    """Like write_rows, for rows given as values in the table's column order (at least one)."""
    columns = tuple(c.name for c in table.columns)
    _copy(connection, table, columns, map(values_writer(table, "postgresql"), rows), upsert=upsert)


def append_values(
    connection: sa.Connection, table: sa.Table, rows: Sequence[Sequence[Any]]
) -> None:
    """COPY rows in (psycopg sends them while the server works on the other core)."""
    write_values(connection, table, rows, upsert=False)


def _copy(
    connection: sa.Connection,
    table: sa.Table,
    columns: tuple[str, ...],
    rows: Iterable[Sequence[Any]],
    *,
    upsert: bool,
) -> None:
    names = ", ".join(columns)
    cursor = driver_cursor(connection)
    target = table.name
    # COPY cannot write a table under row-level security: go through a temporary table.
    staged = upsert or _row_security(connection, cursor, table.name)
    if staged:
        target = f"pending_{table.name}"
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {target} "
            f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    # Binary COPY: psycopg packs each value in C rather than formatting text, and the
    # server does not parse it back (about half the cost per row of a text COPY).
    cursor.adapters.register_dumper(None, _JsonbBinary)
    with cursor.copy(f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(copy_types(table, columns))
        for row in rows:
            copy.write_row(row)
    if staged:
        merge = ""
        if upsert:
            keys = [c.name for c in table.primary_key.columns]
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
            merge = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        cursor.execute(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {target}{merge}")
        cursor.execute(f"TRUNCATE {target}")


# What each column type of the tables is sent as in a binary COPY: the server applies no
# cast, so the binary format must be the column's own (varchar's is text's).
_COPY_TYPES = {
    "BIGINT": "int8",
    "INTEGER": "int4",
    "BOOLEAN": "bool",
    "TEXT": "text",
    "VARCHAR": "text",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSONB": "jsonb",
}


@cache
def copy_types(table: sa.Table, columns: tuple[str, ...]) -> list[str]:
    """The PostgreSQL type of each column, as a binary COPY of `columns` must send it."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = []
    for name in columns:
        compiled = table.c[name].type.compile(dialect=dialect).partition("(")[0]
        if compiled not in _COPY_TYPES:
            raise TypeError(f"{table.name}.{name}: no binary COPY format for {compiled}")
        names.append(_COPY_TYPES[compiled])
    return names


class _JsonbBinary(adapt.Dumper):
    """jsonb in a binary COPY from JSON text already made (by orjson): version 1, then it."""

    format = pq.Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        """Prefix the JSON text with jsonb's binary format version."""
        return b"\x01" + (obj if isinstance(obj, bytes) else obj.encode())


def _row_security(connection: sa.Connection, cursor: Any, table: str) -> bool:
    """Whether `table` has row-level security, asked once per table and transaction.

    A batch's background write used to ask before every COPY: a round trip each, after
    which the writer thread waits for the interpreter's lock again. Once the transaction
    has written the table, no one can turn the setting over before it ends (ALTER TABLE
    waits for the lock the write holds). A name resolves anew after `set_search_path`.
    """
    transaction = connection.get_transaction()
    cached = connection.info.get(_ROW_SECURITY)
    if cached is None or cached[0] is not transaction:
        cached = connection.info[_ROW_SECURITY] = (transaction, {})
    known: dict[str, bool] = cached[1]
    if table not in known:
        cursor.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (table,))
        found = cursor.fetchone()
        known[table] = bool(found and found[0])
    return known[table]


_ROW_SECURITY = "projections.row_security"  # connection.info: (transaction, {table: bool})


def set_search_path(connection: sa.Connection, schemas: str) -> None:
    """Resolve unqualified names in `schemas` for the rest of the transaction."""
    connection.exec_driver_sql(f"SET LOCAL search_path TO {schemas}")
    connection.info.pop(_ROW_SECURITY, None)  # the same names may now be other tables


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
