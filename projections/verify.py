"""`verify`: replay the source into a scratch read model and compare it with the live one."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import store
from projections.config import Settings
from projections.errors import SourceMismatchError
from projections.projector import ProgressCallback
from projections.schema import PROJECTOR_TABLES
from projections.shadow import Shadow
from projections.sources import Source
from projections.tables import ENTITY_TABLES, TABLES

SCRATCH = "projections_verify"
SHOWN = 5
# Columns that record when or where a row was written, not what the events say.
_VOLATILE = {"id", "quarantined_at", "source"}
# Tables compared key by key: entity tables by primary key, the rest by what identifies a row.
_KEYS: dict[str, tuple[str, ...]] = {
    **{str(t.name): tuple(c.name for c in t.primary_key.columns) for t in ENTITY_TABLES},
    "processed_events": ("event_id",),
    "event_anomalies": ("position", "kind", "event_id"),
    "quarantined_events": ("position",),
}


@dataclass
class TableDiff:
    """How one live table differs from the replay."""

    table: str
    rows: int = 0
    missing: list[Any] = field(default_factory=list)
    extra: list[Any] = field(default_factory=list)
    differing: list[dict[str, Any]] = field(default_factory=list)
    missing_count: int = 0
    extra_count: int = 0
    differing_count: int = 0

    @property
    def identical(self) -> bool:
        """True when no row is missing, extra or different."""
        return not (self.missing_count or self.extra_count or self.differing_count)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with the first few keys of each kind."""
        return {
            "table": self.table,
            "rows": self.rows,
            "missing": self.missing_count,
            "extra": self.extra_count,
            "differing": self.differing_count,
            "first_missing": self.missing,
            "first_extra": self.extra,
            "first_differing": self.differing,
        }


@dataclass
class VerifyReport:
    """The comparison of every table, at the position the live read model stands."""

    position: int
    tables: list[TableDiff]

    @property
    def identical(self) -> bool:
        """True when every table matches the replay."""
        return all(t.identical for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "identical": self.identical,
            "position": self.position,
            "tables": [t.as_dict() for t in self.tables],
        }


def verify(
    engine: Engine,
    source: Source,
    config: Settings,
    *,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Replay up to the live checkpoint into scratch tables and compare them key by key."""
    with engine.connect() as connection:
        checkpoints = store.read_checkpoints(connection, source.label)
    cursors = {source.cursor(c.position, c.source_state) for c in checkpoints.values()}
    if len(cursors) > 1:
        raise SourceMismatchError(
            "the projectors stand at different positions: run `projections run` first"
        )
    for checkpoint in checkpoints.values():
        source.verify(checkpoint.position, checkpoint.source_state)
    position = next(iter(checkpoints.values())).position
    source.until = cursors.pop()  # type: ignore[attr-defined]
    scratch = Shadow(engine, tuple(PROJECTOR_TABLES), name=SCRATCH)
    try:
        with scratch.claimed("verify") as claim:
            try:
                scratch.prepare(resume=False)
                if position:
                    scratch.build(source, config, progress=progress, should_stop=None)
                if not claim.held():
                    raise scratch.lost("verify")
                assert scratch.engine is not None
                diffs = [_compare(engine, scratch.engine, table) for table in _KEYS]
            finally:
                if claim.held():
                    scratch.drop()
                elif scratch.engine is not None:
                    scratch.engine.dispose()
    finally:
        source.until = None  # type: ignore[attr-defined]
    return VerifyReport(position, diffs)


def _rows(
    engine: Engine, table: str
) -> Generator[tuple[tuple[Any, ...], dict[str, Any]], None, None]:
    t = TABLES[table]
    keys = _KEYS[table]
    # Byte order on both databases, which is Python's order for str: the merge relies on it.
    order = [
        t.c[k].collate("C")
        if engine.dialect.name == "postgresql" and isinstance(t.c[k].type, sa.String)
        else t.c[k]
        for k in keys
    ]
    query = sa.select(t).order_by(*order)
    with engine.connect().execution_options(read_only=True) as connection:
        for row in connection.execution_options(yield_per=5_000).execute(query).mappings():
            data = {k: v for k, v in row.items() if k not in _VOLATILE}
            yield tuple(_sortable(data[k]) for k in keys), data


def _sortable(value: Any) -> Any:
    return (value is None, value if value is not None else 0)


def _compare(live: Engine, scratch: Engine, table: str) -> TableDiff:
    """Merge the two tables in key order and record what differs."""
    diff = TableDiff(table)
    left, right = _rows(live, table), _rows(scratch, table)
    try:
        _merge(table, diff, left, right)
    finally:
        # Close both cursors and their connections before anyone drops the scratch tables.
        left.close()
        right.close()
    return diff


def _merge(
    table: str,
    diff: TableDiff,
    left: Iterator[tuple[tuple[Any, ...], dict[str, Any]]],
    right: Iterator[tuple[tuple[Any, ...], dict[str, Any]]],
) -> None:
    have, want = next(left, None), next(right, None)
    while have is not None or want is not None:
        if want is None or (have is not None and have[0] < want[0]):
            assert have is not None
            diff.rows += 1
            diff.extra_count += 1
            _keep(diff.extra, _key(table, have[1]))
            have = next(left, None)
        elif have is None or want[0] < have[0]:
            diff.missing_count += 1
            _keep(diff.missing, _key(table, want[1]))
            want = next(right, None)
        else:
            diff.rows += 1
            columns = sorted(c for c in want[1] if have[1].get(c) != want[1][c])
            if columns:
                diff.differing_count += 1
                _keep(
                    diff.differing,
                    {
                        "key": _key(table, want[1]),
                        "columns": {
                            c: {"live": have[1].get(c), "replay": want[1][c]} for c in columns
                        },
                    },
                )
            have, want = next(left, None), next(right, None)


def _key(table: str, row: dict[str, Any]) -> Any:
    keys = _KEYS[table]
    return row[keys[0]] if len(keys) == 1 else [row[k] for k in keys]


def _keep(items: list[Any], item: Any) -> None:
    if len(items) < SHOWN:
        items.append(item)
