"""The pending rows of one batch: loaded before folding, changed in memory, written at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from projections.tables import ENTITY_TABLES

Row = dict[str, Any]
Key = str | tuple[str, str]


def blank_row(table: sa.Table) -> Row:
    """A row of `table` with every column at its empty value."""
    template = _BLANK.get(table.name)
    if template is None:
        template = {column.name: None for column in table.columns}
        for name, empty in (("version", 0), ("participant_count", 0), ("active", False)):
            if name in template:
                template[name] = empty
        _BLANK[table.name] = template
    row = template.copy()
    if "attributes" in row:
        row["attributes"] = {}
    return row


_BLANK: dict[str, Row] = {}
_KEY_COLUMNS = {t.name: [c.name for c in t.primary_key.columns] for t in ENTITY_TABLES}


@dataclass
class Pending:
    """Rows of the batch by table and key; `None` records a row known not to exist."""

    rows: dict[str, dict[Key, Row | None]] = field(
        default_factory=lambda: {t.name: {} for t in ENTITY_TABLES}
    )
    original: dict[str, dict[Key, tuple[Any, ...] | None]] = field(
        default_factory=lambda: {t.name: {} for t in ENTITY_TABLES}
    )
    dirty: dict[str, set[Key]] = field(
        default_factory=lambda: {t.name: set() for t in ENTITY_TABLES}
    )

    def remember(
        self, table: str, key: Key, row: Row | None, values: tuple[Any, ...] | None
    ) -> None:
        """Record a row as it was before any event of the batch (`values`: in column order)."""
        self.rows[table][key] = row
        self.original[table][key] = values

    def get(self, table: str, key: Key) -> Row | None:
        """The current pending row, or None if it does not exist (it must have been loaded)."""
        return self.rows[table][key]

    def upsert(self, table: sa.Table, key: Key) -> tuple[Row, bool]:
        """The pending row for key, created blank when missing; second value: it is new."""
        rows = self.rows[table.name]
        row = rows[key]
        created = row is None
        if row is None:
            row = blank_row(table)
            names = _KEY_COLUMNS[table.name]
            if isinstance(key, tuple):
                row.update(zip(names, key, strict=True))
            else:
                row[names[0]] = key
            rows[key] = row
        self.dirty[table.name].add(key)
        return row, created

    def touch(self, table: str, key: Key) -> None:
        """Mark an existing row as changed."""
        self.dirty[table].add(key)
