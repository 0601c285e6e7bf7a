"""The schema comes only from migrations, and migrations match the SQLModel tables."""

from __future__ import annotations

import sqlalchemy as sa

from projections import migrate
from tests.helpers import Database


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
