"""The schema comes only from migrations, and migrations match the SQLModel tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from projections import migrate
from projections.db import create_engine
from tests.helpers import Database, partial_idempotency_index


def test_migrations_match_the_tables(database: Database) -> None:
    """alembic finds no difference between the migrated schema and the SQLModel tables."""
    migrate.check(database.engine)


def test_migrate_creates_every_table_from_nothing(blank_database: Database) -> None:
    """Upgrading an empty database creates every table and records the head revision."""
    before, after = migrate.upgrade(blank_database.engine)
    assert before is None
    assert after == migrate.head_revision()
    names = set(sa.inspect(blank_database.engine).get_table_names())
    assert {
        "customers",
        "contacts",
        "providers",
        "channel_mappings",
        "conversations",
        "conversation_participants",
        "quarantined_events",
        "event_anomalies",
        "projection_checkpoints",
    } <= names


def test_the_idempotency_index_holds_only_rows_with_a_key(database: Database) -> None:
    """About half the ledger's rows have no idempotency key: the index that finds
    duplicates by key leaves them out (half the index upkeep of a rebuild), and lookups
    by key still find what is there."""
    from projections import dialect
    from projections.tables import TABLES

    assert partial_idempotency_index(database)
    rows = [
        ("evt_1", "contacts", "con_1", "k1", 1),
        ("evt_2", "contacts", "con_1", None, 2),
        ("evt_3", "contacts", "con_2", "k1", 3),
    ]
    with database.engine.begin() as connection:
        dialect.append_values(connection, TABLES["processed_events"], rows)
        ids, triples = dialect.fetch_seen(
            connection,
            ["evt_2", "evt_9"],
            [("contacts", "con_1", "k1"), ("contacts", "con_1", "k2"), ("contacts", "con_2", "k1")],
        )
    assert ids == {"evt_2"}
    assert triples == {("contacts", "con_1", "k1"), ("contacts", "con_2", "k1")}


def test_migrate_twice_changes_nothing(blank_database: Database) -> None:
    """A second upgrade is a no-op that reports the same revision."""
    migrate.upgrade(blank_database.engine)
    before, after = migrate.upgrade(blank_database.engine)
    assert before == after == migrate.head_revision()


def test_shipped_head_is_alembics_head() -> None:
    """The head read from the migration files is the one alembic finds."""
    assert migrate.shipped_head() == migrate.head_revision()


def test_is_current_only_at_the_head(blank_database: Database) -> None:
    """An empty, migrated, older or doubled version table is told apart without alembic."""
    engine = blank_database.engine
    assert not migrate.is_current(engine)
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    assert not migrate.is_current(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM alembic_version"))
    assert not migrate.is_current(engine)


def test_binary_copy_sends_every_column_in_its_own_type(postgres_database: Database) -> None:
    """A binary COPY is not cast by the server: each column must go as the migrated type."""
    from projections.dialect.pg import copy_types
    from projections.tables import TABLES

    # varchar's binary format is text's; every other type must be the column's own.
    same_format = {"character varying": "text"}
    with postgres_database.engine.connect() as connection:
        for name, table in TABLES.items():
            columns = tuple(c.name for c in table.columns)
            migrated: dict[str, str] = dict(
                connection.execute(
                    sa.text(
                        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                        "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 "
                        "AND NOT attisdropped"
                    ),
                    {"table": name},
                ).all()
            )
            sent = [
                connection.execute(
                    sa.text("SELECT CAST(CAST(:t AS regtype) AS text)"), {"t": t}
                ).scalar_one()
                for t in copy_types(table, columns)
            ]
            expected = [same_format.get(migrated[c], migrated[c]) for c in columns]
            assert sent == expected, name


def test_rows_appended_in_the_background_come_back_unchanged(database: Database) -> None:
    """The ledger's background write (one JSON array per statement on SQLite) keeps every
    value as given: quotes, backslashes, non-ASCII and JSON-looking text, nulls, the widest
    positions, and more rows than one statement takes."""
    from projections import dialect
    from projections.tables import TABLES

    awkward = ['a"b', "back\\slash", "ünï😀", '{"x": [1]}', "null", "  ", "1e3", "\t\n"]
    rows = [
        (
            f"evt_{i:06d}_{awkward[i % len(awkward)]}",
            "contacts",
            awkward[(i + 3) % len(awkward)],
            None if i % 3 == 0 else awkward[(i + 5) % len(awkward)],
            2**63 - 1 - i if i % 2 else i,
        )
        for i in range(12_345)
    ]
    table = TABLES["processed_events"]
    with database.engine.begin() as connection:
        dialect.append_values(connection, table, rows)
        dialect.append_values(connection, table, [])
    with database.engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT event_id, projector, aggregate_id, idempotency_key, position "
                "FROM processed_events"
            )
        ).all()
    assert sorted(tuple(r) for r in found) == sorted(rows)


def _ledger_rows(first: int, count: int) -> list[tuple[str, str, str, None, int]]:
    return [(f"evt_{i:06d}", "contacts", f"con_{i:06d}", None, i) for i in range(first, count)]


def test_row_security_is_asked_once_per_table_and_transaction(
    postgres_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's background COPY does not ask the catalogue about row-level security each
    time: once per table and transaction, and again after the search path changes."""
    from projections import dialect
    from projections.tables import TABLES

    asked: list[str] = []
    execute = psycopg.Cursor.execute

    def counting(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if "relrowsecurity" in str(query):
            asked.append(str(args[0][0]) if args else "")
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    ledger, anomalies = TABLES["processed_events"], TABLES["event_anomalies"]
    anomaly = {
        "projector": "contacts",
        "source": "log",
        "position": 1,
        "event_id": "evt_x",
        "event_name": "ContactUpdated",
        "aggregate_type": "contact",
        "aggregate_id": "con_x",
        "kind": "version_gap",
        "detail": "expected version 1, got 3",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    with postgres_database.engine.begin() as connection:
        for first in (0, 10, 20):
            dialect.append_values(connection, ledger, _ledger_rows(first, first + 10))
            dialect.write_rows(connection, anomalies, [anomaly], upsert=False)
        assert sorted(asked) == ["event_anomalies", "processed_events"]
        dialect.set_search_path(connection, "public")
        dialect.append_values(connection, ledger, _ledger_rows(30, 40))
        assert asked.count("processed_events") == 2
    with postgres_database.engine.begin() as connection:  # the same pooled connection
        dialect.append_values(connection, ledger, _ledger_rows(40, 50))
    assert asked.count("processed_events") == 3


def test_row_security_turned_on_between_transactions_is_honoured(
    postgres_database: Database,
) -> None:
    """A writer subject to row-level security enabled after its last transaction goes
    through the staging table (COPY refuses such a table), not a remembered answer."""
    from projections import dialect
    from projections.tables import TABLES

    db, role = postgres_database, f"writer_{uuid.uuid4().hex[:8]}"
    ledger = TABLES["processed_events"]
    with db.engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT SELECT, INSERT ON processed_events TO {role}")
    writer = create_engine(db.url.set(username=role))
    try:
        with writer.begin() as connection:
            dialect.append_values(connection, ledger, _ledger_rows(0, 5))
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE processed_events ENABLE ROW LEVEL SECURITY")
            connection.exec_driver_sql(
                f"CREATE POLICY test_writer_all ON processed_events TO {role} "
                "USING (true) WITH CHECK (true)"
            )
        with writer.begin() as connection:  # the same pooled connection as before
            dialect.append_values(connection, ledger, _ledger_rows(5, 10))
        with db.engine.connect() as connection:
            found = connection.execute(sa.text("SELECT count(*) FROM processed_events"))
            assert found.scalar_one() == 10
    finally:
        writer.dispose()
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP POLICY IF EXISTS test_writer_all ON processed_events")
            connection.exec_driver_sql("ALTER TABLE processed_events DISABLE ROW LEVEL SECURITY")
            connection.exec_driver_sql(f"REVOKE ALL ON processed_events FROM {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
