"""The pending rows of one batch: loaded before folding, changed in memory, written at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from projections.tables import ENTITY_TABLES

Key = str | tuple[str, str]
# One empty attributes object shared by every row without attributes (nothing mutates it).
EMPTY_ATTRIBUTES: dict[str, Any] = {}


class Row:
    """One row of an entity table: a slot per column, read and set as attributes.

    Each table has its own subclass (`ROW_CLASSES`); a run keeps these objects from
    batch to batch, so folding an event never converts a row. The annotations are
    every column handlers use, for the type checker; a table's class has only its own.
    """

    if not TYPE_CHECKING:  # the checker sees the columns below; each table's class has slots
        __slots__ = ()

    # keys
    conversation_id: str
    participant_id: str
    # entity columns (SPEC §5)
    version: int
    created_at: datetime | None
    updated_at: datetime | None
    last_event_id: str | None
    attributes: dict[str, Any]
    customer_id: str | None
    status: str | None
    status_reason: str | None
    # per table
    name: str | None
    display_name: str | None
    deleted_at: datetime | None
    kind: str | None
    address: str | None
    normalized: str | None
    provider_id: str | None
    provider_kind: str | None
    channel_id: str | None
    contact_id: str | None
    topic: str | None
    closed_at: datetime | None
    archived_at: datetime | None
    participant_count: int
    channel_kind: str | None
    channel_address: str | None
    contact_display_name: str | None
    active: bool
    added_at: datetime | None
    removed_at: datetime | None


_EMPTY_VALUES = {"version": 0, "participant_count": 0, "active": False}


def _row_class(table: sa.Table) -> Callable[..., Row]:
    # Key columns first, so a new row is made from its key alone.
    keys = [c.name for c in table.primary_key.columns]
    names = keys + [c.name for c in table.columns if c.name not in keys]
    fields = [
        (name, Any, dataclasses.field(default=_EMPTY_VALUES.get(name)))
        for name in names[len(keys) :]
    ]
    made = dataclasses.make_dataclass(
        "".join(part.title() for part in table.name.split("_")) + "Row",
        [*keys, *fields],
        bases=(Row,),
        slots=True,
        eq=False,
    )
    made.__module__ = __name__
    return made


ROW_CLASSES: dict[str, Callable[..., Row]] = {t.name: _row_class(t) for t in ENTITY_TABLES}
# A row's values in the table's column order, as written to the database.
VALUES = {t.name: attrgetter(*(c.name for c in t.columns)) for t in ENTITY_TABLES}
_HAS_ATTRIBUTES = frozenset(t.name for t in ENTITY_TABLES if "attributes" in t.columns)


def new_row(table: str, key: Key) -> Row:
    """A row of `table` for `key` with every other column at its empty value."""
    row = ROW_CLASSES[table](*key) if isinstance(key, tuple) else ROW_CLASSES[table](key)
    if table in _HAS_ATTRIBUTES:
        row.attributes = EMPTY_ATTRIBUTES
    return row


def row_from(table: str, values: dict[str, Any]) -> Row:
    """A row of `table` from its column values by name (as read from the database)."""
    row = ROW_CLASSES[table](**values)
    if table in _HAS_ATTRIBUTES and not row.attributes:
        row.attributes = EMPTY_ATTRIBUTES
    return row


class Held(dict[Key, "Row | None"]):
    """Rows by key; in a complete table, a key not here is a row that does not exist."""

    complete = False

    def __missing__(self, key: Key) -> None:
        if self.complete:
            return None
        raise KeyError(key)  # not known yet: it must be loaded first


@dataclass
class Pending:
    """Rows of the batch by table and key; `None` records a row known not to exist."""

    rows: Mapping[str, dict[Key, Row | None]] = field(
        default_factory=lambda: {t.name: {} for t in ENTITY_TABLES}
    )
    dirty: dict[str, set[Key]] = field(
        default_factory=lambda: {t.name: set() for t in ENTITY_TABLES}
    )
    # Of parent tables only: the columns children copy (one value, or a tuple of them),
    # as they were before the batch, for the rows that existed then. Left out for a
    # parent whose children are all held and written whole (a table the run began empty).
    original: dict[str, dict[Key, Any]] = field(default_factory=dict)
    # The run's table of repeated strings (owners, reasons): see `share`.
    strings: dict[str, str] = field(default_factory=dict)

    def share(self, value: str | None) -> str | None:
        """The run's one copy of a string that repeats across rows, kept as rows get it.

        Handlers pass owner ids and reasons through here as they set them: each event
        brings its own copy, and a row would otherwise keep that one for good.
        """
        if value is None:
            return None
        return self.strings.setdefault(value, value)

    def get(self, table: str, key: Key) -> Row | None:
        """The current pending row, or None if it does not exist (it must have been loaded)."""
        return self.rows[table][key]

    def upsert(self, table: str, key: Key) -> tuple[Row, bool]:
        """The pending row for key, created blank when missing; second value: it is new."""
        rows = self.rows[table]
        row = rows[key]
        created = row is None
        if row is None:
            row = rows[key] = new_row(table, key)
        self.dirty[table].add(key)
        return row, created

    def touch(self, table: str, key: Key) -> None:
        """Mark an existing row as changed."""
        self.dirty[table].add(key)
