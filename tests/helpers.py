"""Test helpers: a database handle, event builders, log files and table snapshots."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from projections.config import Settings, VersionMode
from projections.db import create_engine
from projections.projector import RunResult, catch_up, rebuild
from projections.schema import EVENT_FAMILY
from projections.sources.ndjson import NdjsonSource
from projections.tables import ENTITY_TABLES, TABLES

T0 = datetime(2025, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def ts(seconds: float) -> str:
    """An occurred_at `seconds` after the tests' epoch, in the canonical Z form."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ev(
    name: str,
    aggregate_id: str,
    version: int = 1,
    /,
    *,
    at: float | None = None,
    event_id: str | None = None,
    idempotency_key: str | None = None,
    customer_id: str | None = "cus_1",
    **payload: Any,
) -> dict[str, Any]:
    """A valid event of `name` for `aggregate_id`, payload fields given as keywords."""
    family = EVENT_FAMILY[name]
    body: dict[str, Any] = {family.id_field: aggregate_id}
    if family.id_field != "customer_id" and customer_id is not None:
        body["customer_id"] = customer_id
    body.update(payload)
    number = next(_ids)
    event: dict[str, Any] = {
        "event_name": name,
        "event_id": event_id or f"evt_{number:08d}",
        "aggregate_type": family.aggregate_type,
        "aggregate_id": aggregate_id,
        "occurred_at": ts(at if at is not None else number),
        "actor": "user:1",
        "version": version,
        "payload": body,
    }
    if idempotency_key is not None:
        event["idempotency_key"] = idempotency_key
    return event


def line(event: dict[str, Any] | bytes | str) -> bytes:
    """One NDJSON line (with its newline) for an event dict or raw text."""
    if isinstance(event, dict):
        return orjson.dumps(event) + b"\n"
    raw = event.encode() if isinstance(event, str) else event
    return raw if raw.endswith(b"\n") else raw + b"\n"


def write_log(path: Path, events: Iterable[dict[str, Any] | bytes | str]) -> Path:
    """Write events (dicts or raw lines) as an NDJSON file."""
    path.write_bytes(b"".join(line(e) for e in events))
    return path


def append_log(path: Path, events: Iterable[dict[str, Any] | bytes | str]) -> None:
    """Append events to an NDJSON file."""
    with path.open("ab") as handle:
        handle.write(b"".join(line(e) for e in events))


@dataclass
class Database:
    """A test database: its kind, URL, a lazily opened engine and a scratch folder."""

    kind: str
    url: URL
    tmp: Path
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The engine, opened on first use."""
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    @property
    def url_text(self) -> str:
        """The URL with its password, for a subprocess."""
        return self.url.render_as_string(hide_password=False)

    def close(self) -> None:
        """Dispose of the engine."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def settings(self, **options: Any) -> Settings:
        """Settings for this database."""
        return Settings(database_url=self.url, **options)

    def project(
        self,
        events: Sequence[dict[str, Any] | bytes | str] | Path,
        *,
        fresh: bool = False,
        name: str = "log.ndjson",
        batch_size: int = 5_000,
        version_mode: VersionMode = VersionMode.sequence,
        strict: bool = False,
    ) -> RunResult:
        """Write events to a log (unless a path is given) and catch up, or rebuild when fresh."""
        path = events if isinstance(events, Path) else write_log(self.tmp / name, events)
        source = NdjsonSource(path)
        settings = self.settings(batch_size=batch_size, version_mode=version_mode, strict=strict)
        try:
            work = rebuild if fresh else catch_up
            return work(self.engine, source, settings)
        finally:
            source.close()

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """All rows of a table (optionally filtered by equality), ordered by primary key."""
        t = TABLES[table]
        query = sa.select(t).order_by(*(t.primary_key.columns or t.columns))
        for column, value in where.items():
            query = query.where(t.c[column] == value)
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    def row(self, table: str, key: str | tuple[str, str]) -> dict[str, Any] | None:
        """One row by primary key, or None."""
        t = TABLES[table]
        columns = list(t.primary_key.columns)
        values = key if isinstance(key, tuple) else (key,)
        query = sa.select(t)
        for column, value in zip(columns, values, strict=True):
            query = query.where(column == value)
        with self.engine.connect() as connection:
            found = connection.execute(query).mappings().first()
        return dict(found) if found is not None else None

    def count(self, table: str) -> int:
        """How many rows a table holds."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(TABLES[table])
                ).scalar_one()
            )

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every table the events determine, without ids, source names and wall-clock columns."""
        result: dict[str, list[dict[str, Any]]] = {}
        for table in ENTITY_TABLES:
            result[table.name] = self.rows(table.name)
        result["processed_events"] = sorted(
            self.rows("processed_events"), key=lambda r: r["event_id"]
        )
        result["event_anomalies"] = sorted(
            (
                {k: v for k, v in r.items() if k not in ("id", "source")}
                for r in self.rows("event_anomalies")
            ),
            key=lambda r: (r["position"], r["kind"]),
        )
        result["quarantined_events"] = sorted(
            (
                {k: v for k, v in r.items() if k not in ("id", "quarantined_at", "source")}
                for r in self.rows("quarantined_events")
            ),
            key=lambda r: r["position"],
        )
        return result

    def checkpoints(self) -> dict[str, int]:
        """Each projector's checkpoint position."""
        return {r["projector"]: r["position"] for r in self.rows("projection_checkpoints")}


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `projections` command line in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "projections", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def partial_idempotency_index(database: Database) -> bool:
    """Whether the ledger's idempotency index leaves out rows without a key."""
    name = "ix_processed_events_projector_aggregate_id_idempotency_key"
    with database.engine.connect() as connection:
        if database.kind == "postgres":
            found = connection.execute(
                sa.text(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = :n"
                ),
                {"n": name},
            )
        else:
            found = connection.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}
            )
        definition: str = found.scalar_one()
    return "idempotency_key is not null" in " ".join(definition.lower().replace("(", " ").split())
