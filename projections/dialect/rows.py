"""How row values travel to and from the drivers without SQLAlchemy's per-value processing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import sqlalchemy as sa

from projections.tables import UtcDateTime

Convert = Callable[[Any], Any]


def driver_cursor(connection: sa.Connection) -> Any:
    """A cursor of the driver connection under SQLAlchemy's, in the same transaction."""
    driver = connection.connection.driver_connection
    assert driver is not None
    return driver.cursor()


def _json_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _json_bytes(value: Any) -> Any:
    # For PostgreSQL's binary COPY (dialect/pg.py), which sends JSON text as bytes.
    if value is None or isinstance(value, str | bytes):
        return value
    return orjson.dumps(value)


def _sqlite_timestamp(value: Any) -> Any:
    # The text format UtcDateTime stores on SQLite (see tables.py).
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.microsecond and value.__class__ is datetime:
        # orjson writes "YYYY-MM-DDTHH:MM:SS.ffffff+00:00" in C, in half the time of
        # isoformat; without microseconds it leaves the fraction out, and it refuses
        # subclasses of datetime (a test clock's, say).
        return orjson.dumps(value).decode()[1:-1].replace("T", " ", 1)
    return value.isoformat(sep=" ", timespec="microseconds")


def _integer(value: Any) -> Any:
    return None if value is None else int(value)


def kind(column: sa.Column[Any]) -> str:
    """json, timestamp, boolean or plain: what a column's values need on the way out."""
    if isinstance(column.type, sa.JSON):
        return "json"
    if isinstance(column.type, UtcDateTime):
        return "timestamp"
    if isinstance(column.type, sa.Boolean):
        return "boolean"
    return "plain"


def _converters(table: sa.Table, columns: Sequence[str], dialect: str) -> list[tuple[int, Convert]]:
    converters: list[tuple[int, Convert]] = []
    for index, name in enumerate(columns):
        found = kind(table.c[name])
        if found == "json":
            converters.append((index, _json_bytes if dialect == "postgresql" else _json_text))
        elif found == "timestamp" and dialect == "sqlite":
            converters.append((index, _sqlite_timestamp))
        elif found == "boolean" and dialect == "sqlite":
            converters.append((index, _integer))
    return converters


@cache
def writer(
    table: sa.Table, columns: tuple[str, ...], dialect: str
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function turning a row dict into the driver's tuple for `columns`."""
    converters = _converters(table, columns, dialect)

    def convert(row: dict[str, Any]) -> tuple[Any, ...]:
        values = [row[name] for name in columns]
        for index, function in converters:
            values[index] = function(values[index])
        return tuple(values)

    return convert


@cache
def values_writer(table: sa.Table, dialect: str) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function turning values in the table's column order into the driver's values."""
    converters = _converters(table, [c.name for c in table.columns], dialect)

    def same(row: Sequence[Any]) -> Sequence[Any]:
        return row  # nothing to convert (the ledger on PostgreSQL): no copy per row

    def convert(row: Sequence[Any]) -> Sequence[Any]:
        values = list(row)
        for index, function in converters:
            values[index] = function(values[index])
        return values

    return convert if converters else same


def json_columns(table: sa.Table, columns: Sequence[str]) -> list[int]:
    """Indexes of the JSON columns, which SQLite returns as text."""
    return [i for i, name in enumerate(columns) if kind(table.c[name]) == "json"]


def parse_json(value: Any) -> Any:
    """JSON text from SQLite as Python values (PostgreSQL's driver already parsed it)."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value
