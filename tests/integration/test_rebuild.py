"""Rebuild without downtime (shadow, verify, swap), one-projector rebuilds, and verify."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from projections import migrate
from projections.fold import COPIES
from projections.generator import Noise, generate
from projections.importer import import_log
from projections.projector import catch_up
from projections.schema import EVENT_FAMILY, PROJECTOR_TABLES
from projections.shadow import RebuildError, Shadow, shadow_rebuild
from projections.sources.eventlog import EventLogSource
from projections.sources.ndjson import NdjsonSource
from projections.tables import TABLES
from tests.helpers import (
    Database,
    append_log,
    cli,
    ev,
    partial_idempotency_index,
    write_log,
)


def _log(db: Database, events: int, seed: int = 21, name: str = "log.ndjson") -> Path:
    path = db.tmp / name
    path.write_bytes(b"".join(generate(events, seed=seed, noise=Noise.default())))
    return path


def _rebuild(db: Database, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("rebuild", "--source", str(log), "--database-url", db.url_text, *args)


def _leftovers(db: Database) -> list[str]:
    """Shadow or old schemas (PostgreSQL) or shadow files (SQLite) left behind."""
    if db.kind == "postgres":
        with db.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'projections_%'")
                ).scalars()
            )
    return [p.name for p in db.tmp.iterdir() if ".projections_" in p.name]


def test_rebuild_swaps_in_the_same_tables_as_an_in_place_rebuild(database: Database) -> None:
    """The shadow rebuild yields exactly what replaying in place yields, and leaves nothing."""
    log = _log(database, 2000)
    database.project(log, fresh=True)
    expected = database.snapshot()
    database.project([], name="other.ndjson", fresh=True)  # an unrelated live model
    done = _rebuild(database, log, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["swapped"] is True
    assert database.snapshot() == expected
    assert _leftovers(database) == []
    migrate.check(database.engine)  # the swapped-in tables and indexes are the migrated ones


def test_rebuild_over_a_live_model_keeps_everything_consistent(database: Database) -> None:
    """Rebuilding a model that is already live replaces it with the replay of the whole log."""
    log = _log(database, 1500)
    assert cli("run", "--source", str(log), "--database-url", database.url_text).returncode == 0
    before = database.snapshot()
    done = _rebuild(database, log)
    assert done.returncode == 0, done.stderr
    assert "swapped in" in done.stdout.splitlines()[0]
    assert database.snapshot() == before
    assert set(database.checkpoints().values()) == {log.read_bytes().count(b"\n")}


def test_one_projector_rebuild_leaves_the_others_untouched(database: Database) -> None:
    """rebuild --projector conversations restores conversations only."""
    log = _log(database, 1500)
    database.project(log, fresh=True)
    expected = database.snapshot()
    with database.engine.begin() as connection:
        connection.execute(sa.text("UPDATE customers SET name = 'hand edit'"))
        connection.execute(sa.text("UPDATE conversations SET topic = 'hand edit'"))
        connection.execute(sa.text("DELETE FROM conversation_participants"))
    done = _rebuild(database, log, "--projector", "conversations")
    assert done.returncode == 0, done.stderr
    after = database.snapshot()
    assert after["conversations"] == expected["conversations"]
    assert after["conversation_participants"] == expected["conversation_participants"]
    assert {r["name"] for r in after["customers"]} == {"hand edit"}
    for table in (
        "contacts",
        "providers",
        "channel_mappings",
        "processed_events",
        "event_anomalies",
        "quarantined_events",
    ):
        assert after[table] == expected[table], table
    assert _leftovers(database) == []


def _copies_off_their_parents(db: Database, tables: set[str]) -> list[tuple[Any, ...]]:
    """Copies between `tables` and their parents or children that are not the parent's
    value (NULL without a parent)."""
    wrong = []
    for child, reference, parent, columns in COPIES:
        if child not in tables and parent not in tables:
            continue
        parents = {r[reference]: r for r in db.rows(parent)}  # keyed by the same column
        for row in db.rows(child):
            found = parents.get(row[reference])
            for target, origin in columns.items():
                want = None if found is None else found[origin]
                if row[target] != want:
                    wrong.append((child, row[reference], target, row[target], want))
    return wrong


@pytest.mark.parametrize(
    "projectors",
    [("providers",), ("channels",), ("contacts",), ("conversations",), ("providers", "channels")],
)
def test_a_one_projector_rebuild_sets_every_copy_between_its_tables_and_the_kept_ones(
    database: Database, projectors: tuple[str, ...]
) -> None:
    """Copies as an older version of a projector left them, and orphans: after
    rebuild --projector, every copy to or from a rebuilt table is its parent's value."""
    log = _log(database, 1500)
    append_log(  # parents that never exist: their copies stay NULL
        log,
        [
            ev("ConversationCreated", "cnv_x", 1, channel_id="c", contact_id="n", status="open"),
            ev(
                "ChannelMapped",
                "chn_x",
                1,
                kind="sms",
                address="1",
                normalized="1",
                provider_id="p",
            ),
        ],
    )
    database.project(log, fresh=True)
    everything = set(TABLES)
    assert _copies_off_their_parents(database, everything) == []
    with database.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE conversations SET contact_display_name = 'old', channel_kind = 'x', "
                "channel_address = 'y'"
            )
        )
        connection.execute(sa.text("UPDATE channel_mappings SET provider_kind = 'z'"))
    assert _copies_off_their_parents(database, everything) != []
    done = _rebuild(database, log, *(a for p in projectors for a in ("--projector", p)))
    assert done.returncode == 0, done.stderr
    rebuilt = {t for p in projectors for t in PROJECTOR_TABLES[p]}
    assert _copies_off_their_parents(database, rebuilt) == []


def test_a_one_projector_rebuild_copies_parents_changed_while_it_built(
    database: Database,
) -> None:
    """A live run renames a contact while conversations are rebuilt: the rebuilt
    conversations copy the new name, and keep it when a later run touches them."""
    first = [
        ev("ChannelMapped", "chn_1", 1, kind="sms", address="1", normalized="1", provider_id="p"),
        ev("ContactCreated", "con_1", 1, display_name="Ann"),
        ev(
            "ConversationCreated", "cnv_1", 1, channel_id="chn_1", contact_id="con_1", status="open"
        ),
    ]
    path = write_log(database.tmp / "log.ndjson", first)
    database.project(path)

    renamed: list[bool] = []

    def live_rename(*_: Any) -> None:
        if not renamed:  # once, during the build's first batch
            renamed.append(True)
            append_log(
                path, [ev("ContactUpdated", "con_1", 2, changed_fields={"display_name": "Bob"})]
            )
            database.project(path)

    source = NdjsonSource(path)
    try:
        shadow_rebuild(
            database.engine,
            source,
            database.settings(batch_size=1),
            projectors=("conversations",),
            progress=live_rename,
        )
    finally:
        source.close()
    assert renamed
    row = database.row("conversations", "cnv_1")
    assert row is not None
    assert row["contact_display_name"] == "Bob"
    append_log(path, [ev("ConversationUpdated", "cnv_1", 2, changed_fields={"topic": "t"})])
    database.project(path)
    row = database.row("conversations", "cnv_1")
    assert row is not None
    assert (row["topic"], row["contact_display_name"]) == ("t", "Bob")


def test_unknown_projector_is_a_usage_error(database: Database) -> None:
    """--projector with an unknown name exits 2 and names the choices."""
    log = _log(database, 10)
    done = _rebuild(database, log, "--projector", "invoices")
    assert done.returncode == 2
    assert "conversations" in done.stderr


def test_sigterm_leaves_the_live_model_and_resume_finishes(database: Database) -> None:
    """An interrupted rebuild changes nothing live; --resume completes it from the shadow."""
    log = _log(database, 30000, seed=4)
    old = _log(database, 300, seed=9, name="old.ndjson")
    database.project(old, fresh=True)
    live = database.snapshot()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "projections",
            "rebuild",
            "--source",
            str(log),
            "--database-url",
            database.url_text,
            "--batch-size",
            "500",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROJECTIONS_COMMIT_SECONDS": "0"},  # a commit per batch to resume
    )
    _wait_for_shadow_progress(database)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.fail("the rebuild finished before it could be interrupted: use a larger log")
    assert process.returncode == 1, err
    assert "--resume" in err
    assert database.snapshot() == live
    done = _rebuild(database, log, "--resume", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resumed"] is True
    resumed = database.snapshot()
    database.project(log, fresh=True)
    assert resumed == database.snapshot()
    assert _leftovers(database) == []


@pytest.mark.slow
def test_killed_rebuilds_never_touch_the_live_model(database: Database) -> None:
    """SIGKILL at random moments: the live tables are the old ones or the new, never between."""
    log = _log(database, 20000, seed=8)
    old = _log(database, 400, seed=2, name="old.ndjson")
    database.project(log, fresh=True)
    new = database.snapshot()
    database.project(old, fresh=True)
    live = database.snapshot()
    rnd = random.Random(5)
    interrupted = 0
    for _ in range(5):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "projections",
                "rebuild",
                "--source",
                str(log),
                "--database-url",
                database.url_text,
                "--batch-size",
                str(rnd.choice([200, 1000])),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rnd.uniform(0.3, 3.0))
        process.kill()
        process.wait()
        after = database.snapshot()
        assert after in (live, new), "a killed rebuild left a half-swapped read model"
        if after == live:
            interrupted += 1
        else:
            database.project(old, fresh=True)  # it swapped before the kill: start again
    assert interrupted > 0, "every rebuild finished before its kill: the trials prove nothing"
    done = _rebuild(database, log)
    assert done.returncode == 0, done.stderr
    assert database.snapshot() == new
    assert _leftovers(database) == []


def _wait_for_shadow_progress(db: Database, timeout: float = 60) -> None:
    """Return once the shadow of a running rebuild holds a checkpoint (it is mid-way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if db.kind == "postgres":
                with db.engine.connect() as connection:
                    found = connection.execute(
                        sa.text("SELECT count(*) FROM projections_shadow.projection_checkpoints")
                    ).scalar_one()
            else:
                shadow = Path(f"{db.url.database}.projections_shadow")
                if not shadow.exists():
                    time.sleep(0.02)
                    continue
                engine = sa.create_engine(f"sqlite:///file:{shadow}?mode=ro&uri=true")
                with engine.connect() as connection:
                    found = connection.execute(
                        sa.text("SELECT count(*) FROM projection_checkpoints")
                    ).scalar_one()
                engine.dispose()
            if found:
                return
        except sa.exc.SQLAlchemyError:
            pass  # not created yet
        time.sleep(0.02)
    raise AssertionError("the rebuild never made progress in its shadow")


def _reader(dsn: str, tables: list[str], stop_file: Path, out_file: Path) -> subprocess.Popen[str]:
    code = f"""
import json, sys, time, psycopg
from pathlib import Path
tables = {tables!r}
seen, errors = [], []
with psycopg.connect({dsn!r}, autocommit=True) as c:
    while not Path({str(stop_file)!r}).exists():
        row = {{}}
        for t in tables:
            try:
                row[t] = c.execute(f"SELECT count(*) FROM {{t}}").fetchone()[0]
            except Exception as e:
                errors.append(f"{{t}}: {{e}}")
        seen.append(row)
Path({str(out_file)!r}).write_text(json.dumps({{"seen": seen, "errors": errors}}))
"""
    return subprocess.Popen([sys.executable, "-c", code], text=True)


@pytest.mark.slow
def test_readers_never_see_a_missing_empty_or_shrinking_table(
    postgres_database: Database,
) -> None:
    """A reader querying every table through a rebuild sees no error and no drop in rows."""
    db = postgres_database
    log = _log(db, 60000, seed=13)
    lines = log.read_bytes().splitlines(keepends=True)
    prefix = db.tmp / "prefix.ndjson"
    prefix.write_bytes(b"".join(lines[: len(lines) * 3 // 4]))
    db.project(prefix, fresh=True)
    with db.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM projection_checkpoints"))
    tables = [
        "customers",
        "contacts",
        "providers",
        "channel_mappings",
        "conversations",
        "conversation_participants",
        "processed_events",
        "projection_checkpoints",
    ]
    dsn = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    stop, out = db.tmp / "stop", db.tmp / "reader.json"
    reader = _reader(dsn, tables, stop, out)
    time.sleep(0.5)
    done = _rebuild(db, log)
    time.sleep(0.5)
    stop.touch()
    reader.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["errors"] == []
    seen = result["seen"]
    assert len(seen) > 10
    for table in tables:
        counts = [row[table] for row in seen if table != "projection_checkpoints"]
        if counts:
            assert counts == sorted(counts), f"{table} shrank during the rebuild"
            assert counts[0] > 0
    assert seen[-1]["conversations"] >= seen[0]["conversations"]


def test_a_rebuild_leaves_fresh_statistics_for_the_planner(postgres_database: Database) -> None:
    """Every swapped-in table was analysed: plans right after a rebuild see its real rows."""
    db = postgres_database
    done = _rebuild(db, _log(db, 800))
    assert done.returncode == 0, done.stderr
    with db.engine.connect() as connection:
        analysed: dict[str, bool] = dict(
            connection.execute(
                sa.text(
                    "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
                    "WHERE schemaname = 'public'"
                )
            ).all()
        )
        estimate = connection.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = 'public.customers'::regclass")
        ).scalar_one()
    tables = ["customers", "contacts", "providers", "channel_mappings", "conversations"]
    tables += ["conversation_participants", "processed_events", "projection_checkpoints"]
    assert {t: analysed.get(t) for t in tables} == dict.fromkeys(tables, True)
    assert estimate == db.count("customers") > 0


def test_swap_keeps_grants_row_security_and_views(postgres_database: Database) -> None:
    """Grants, RLS flags and policies of the live tables survive the swap; views follow."""
    db = postgres_database
    log = _log(db, 800)
    db.project(log, fresh=True)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with db.engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role}")
        connection.exec_driver_sql(f"GRANT SELECT ON customers TO {role}")
        connection.exec_driver_sql(
            "CREATE POLICY test_only_enabled ON customers FOR SELECT "
            f"TO {role} USING (status = 'enabled')"
        )
        connection.exec_driver_sql("ALTER TABLE customers ENABLE ROW LEVEL SECURITY")
        connection.exec_driver_sql(
            "CREATE VIEW test_enabled_customers AS SELECT customer_id FROM customers "
            "WHERE status = 'enabled'"
        )
    try:
        done = _rebuild(db, log)
        assert done.returncode == 0, done.stderr
        with db.engine.connect() as connection:
            grants = (
                connection.execute(
                    sa.text(
                        "SELECT privilege_type FROM information_schema.role_table_grants "
                        "WHERE table_name = 'customers' AND grantee = :r"
                    ),
                    {"r": role},
                )
                .scalars()
                .all()
            )
            assert grants == ["SELECT"]
            assert (
                connection.execute(
                    sa.text(
                        "SELECT relrowsecurity FROM pg_class "
                        "WHERE oid = 'public.customers'::regclass"
                    )
                ).scalar_one()
                is True
            )
            assert (
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_policies WHERE tablename = 'customers' "
                        "AND policyname = 'test_only_enabled'"
                    )
                ).scalar_one()
                == 1
            )
            through_view = connection.execute(
                sa.text("SELECT count(*) FROM test_enabled_customers")
            ).scalar_one()
            direct = connection.execute(
                sa.text("SELECT count(*) FROM customers WHERE status = 'enabled'")
            ).scalar_one()
            assert through_view == direct > 0
            depends_on = (
                connection.execute(
                    sa.text(
                        "SELECT DISTINCT t.relnamespace::regnamespace::text FROM pg_depend d "
                        "JOIN pg_rewrite r ON d.objid = r.oid "
                        "JOIN pg_class t ON d.refobjid = t.oid "
                        "WHERE r.ev_class = 'test_enabled_customers'::regclass AND t.relkind = 'r'"
                    )
                )
                .scalars()
                .all()
            )
            assert depends_on == ["public"]
    finally:
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP VIEW IF EXISTS test_enabled_customers")
            connection.exec_driver_sql("DROP POLICY IF EXISTS test_only_enabled ON customers")
            connection.exec_driver_sql("ALTER TABLE customers DISABLE ROW LEVEL SECURITY")
            connection.exec_driver_sql(f"REVOKE ALL ON customers FROM {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")


def test_verify_passes_on_a_faithful_model(database: Database) -> None:
    """verify exits 0 when the live tables equal a replay of the source."""
    log = _log(database, 1200)
    assert _rebuild(database, log).returncode == 0
    done = cli("verify", "--source", str(log), "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["identical"] is True
    assert _leftovers(database) == []


def test_verify_finds_changed_deleted_and_extra_rows(database: Database) -> None:
    """A row changed, a row deleted and a row added by hand are each reported with its key."""
    log = _log(database, 1200)
    assert _rebuild(database, log).returncode == 0
    contact = database.rows("contacts")[3]["contact_id"]
    customer = database.rows("customers")[0]["customer_id"]
    with database.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE customers SET name = 'forged' WHERE customer_id = :c"), {"c": customer}
        )
        connection.execute(sa.text("DELETE FROM contacts WHERE contact_id = :c"), {"c": contact})
        connection.execute(
            sa.text(
                "INSERT INTO providers (provider_id, version, attributes) VALUES ('prv_x', 1, '{}')"
            )
        )
    done = cli("verify", "--source", str(log), "--database-url", database.url_text, "--json")
    assert done.returncode == 1
    report = {t["table"]: t for t in json.loads(done.stdout)["tables"]}
    assert report["customers"]["differing"] == 1
    assert report["customers"]["first_differing"][0]["key"] == customer
    assert report["customers"]["first_differing"][0]["columns"]["name"]["live"] == "forged"
    assert report["contacts"]["missing"] == 1
    assert report["contacts"]["first_missing"] == [contact]
    assert report["providers"]["extra"] == 1
    assert report["providers"]["first_extra"] == ["prv_x"]
    text = cli("verify", "--source", str(log), "--database-url", database.url_text)
    assert text.returncode == 1
    assert "DIFFERENT" in text.stdout
    assert _leftovers(database) == []


def test_verify_compares_at_the_live_position(database: Database) -> None:
    """Lines appended after the last run do not make verify fail."""
    log = _log(database, 1000)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:600]))
    assert cli("run", "--source", str(log), "--database-url", database.url_text).returncode == 0
    log.write_bytes(b"".join(lines))
    done = cli("verify", "--source", str(log), "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["position"] == 600


def test_status_says_when_a_projector_was_built_by_other_code(database: Database) -> None:
    """A stored fingerprint unlike the code's makes status warn; run --rebuild-if-changed fixes."""
    log = _log(database, 600)
    assert _rebuild(database, log).returncode == 0
    clean = json.loads(cli("status", "--database-url", database.url_text, "--json").stdout)
    assert not any(p["rebuild_needed"] for p in clean["projectors"])
    assert {p["fingerprint"] == p["code_fingerprint"] for p in clean["projectors"]} == {True}
    expected = database.snapshot()
    with database.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE projection_checkpoints SET fingerprint = 'built-by-v0' "
                "WHERE projector = 'conversations'"
            )
        )
        connection.execute(sa.text("UPDATE conversations SET topic = 'old code wrote this'"))
    status = json.loads(cli("status", "--database-url", database.url_text, "--json").stdout)
    needed = {p["projector"] for p in status["projectors"] if p["rebuild_needed"]}
    assert needed == {"conversations"}
    assert (
        "rebuild needed: conversations" in cli("status", "--database-url", database.url_text).stdout
    )
    done = cli(
        "run", "--source", str(log), "--database-url", database.url_text, "--rebuild-if-changed"
    )
    assert done.returncode == 0, done.stderr
    assert "rebuilding conversations" in done.stderr
    assert database.snapshot() == expected
    after = json.loads(cli("status", "--database-url", database.url_text, "--json").stdout)
    assert not any(p["rebuild_needed"] for p in after["projectors"])


def test_fingerprint_follows_the_handler_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bumping a family's VERSION changes its fingerprint and only its own."""
    from projections import fingerprint
    from projections.families import conversations

    before = fingerprint.current()
    monkeypatch.setattr(conversations, "VERSION", conversations.VERSION + 1)
    after = fingerprint.current()
    assert after["conversations"] != before["conversations"]
    assert {k: v for k, v in after.items() if k != "conversations"} == {
        k: v for k, v in before.items() if k != "conversations"
    }


def test_a_rebuild_dying_right_after_its_swap_leaves_no_old_tables(
    postgres_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old tables are dropped in the swap's own transaction: nothing after it can strand
    them (a kill between two transactions used to leave a projections_old_* schema)."""
    from projections.shadow import Shadow, shadow_rebuild
    from projections.sources.ndjson import NdjsonSource

    db = postgres_database
    db.project(_log(db, 300, seed=3), fresh=True)
    log = _log(db, 500, seed=4, name="new.ndjson")
    real_swap = Shadow._swap_postgres

    def die_at_the_next_transaction() -> Any:
        raise KeyboardInterrupt  # the process ends once the swap's transaction has committed

    def swap_then_die(self: Shadow, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(db.engine, "begin", die_at_the_next_transaction)
        real_swap(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Shadow, "_swap_postgres", swap_then_die)
    source = NdjsonSource(log)
    try:
        with pytest.raises(KeyboardInterrupt):
            shadow_rebuild(db.engine, source, db.settings())
    finally:
        source.close()
    assert [name for name in _leftovers(db) if name.startswith("projections_old_")] == []


def _covered(lines: list[bytes], ahead: str, at: int, others_at: int) -> int:
    """Lines after each projector's own position (`ahead` stands at `at`, the rest lower)."""
    families = [EVENT_FAMILY[orjson.loads(raw)["event_name"]].name for raw in lines]
    return sum(1 for i, name in enumerate(families, 1) if i > (at if name == ahead else others_at))


def test_a_run_after_a_one_projector_rebuild_applies_each_event_once(database: Database) -> None:
    """Projectors at different positions: each takes only the lines after its own."""
    lines = list(generate(400, seed=7, noise=Noise.none()))
    path = database.tmp / "log.ndjson"
    path.write_bytes(b"".join(lines[:150]))
    settings = database.settings(batch_size=50)
    source = NdjsonSource(path)
    try:
        catch_up(database.engine, source, settings)
        path.write_bytes(b"".join(lines[:300]))
        shadow_rebuild(database.engine, source, settings, projectors=("conversations",))
        assert set(database.checkpoints().values()) == {150, 300}
        path.write_bytes(b"".join(lines))
        result = catch_up(database.engine, source, settings)
    finally:
        source.close()
    assert (result.counters.read, result.counters.duplicate) == (
        _covered(lines, "conversations", 300, 150),
        0,
    )
    expected = database.snapshot()
    assert database.project(path, fresh=True).counters.duplicate == 0
    assert database.snapshot() == expected


def test_projectors_at_different_positions_in_the_event_log(database: Database) -> None:
    """The same with the event_log table as the source, whose cursors are (tx, position)."""
    lines = list(generate(400, seed=7, noise=Noise.none()))
    settings = database.settings(batch_size=50)

    def load(start: int, end: int) -> None:
        part = database.tmp / f"part{start}.ndjson"
        part.write_bytes(b"".join(lines[start:end]))
        import_log(database.engine, part)

    source = EventLogSource(database.engine)
    load(0, 150)
    catch_up(database.engine, source, settings)
    load(150, 300)
    shadow_rebuild(database.engine, source, settings, projectors=("conversations",))
    assert set(database.checkpoints().values()) == {150, 300}
    load(300, 400)
    result = catch_up(database.engine, source, settings)
    assert (result.counters.read, result.counters.duplicate) == (
        _covered(lines, "conversations", 300, 150),
        0,
    )


@pytest.mark.parametrize("chosen", [None, 5.0])
def test_a_rebuild_commits_its_shadow_every_two_minutes_unless_told(
    database: Database, monkeypatch: pytest.MonkeyPatch, chosen: float | None
) -> None:
    """No one else writes the shadow: its build commits every two minutes, not every 30 s
    (PostgreSQL) or 10 s (SQLite), unless PROJECTIONS_COMMIT_SECONDS says otherwise."""
    intervals: list[float] = []

    def recording(engine: Any, source: Any, settings: Any, **options: Any) -> Any:
        intervals.append(settings.commit_interval)
        return catch_up(engine, source, settings, **options)

    monkeypatch.setattr("projections.shadow.catch_up", recording)
    path = write_log(database.tmp / "log.ndjson", [ev("CustomerCreated", "cus_1", 1, name="A")])
    source = NdjsonSource(path)
    try:
        shadow_rebuild(database.engine, source, database.settings(commit_seconds=chosen))
    finally:
        source.close()
    assert intervals and set(intervals) == {chosen if chosen is not None else 120.0}
    assert database.count("customers") == 1
    # A run on the live file keeps SQLite's short default.
    assert database.settings().commit_interval == (30.0 if database.kind == "postgres" else 10.0)


def test_a_rebuild_keeps_the_indexes_users_added(database: Database) -> None:
    """An index added for one's own queries is still there after a rebuild, over the new rows."""
    path = _customers_with_indexes(
        database,
        [f"Name {i % 7}" for i in range(50)],
        'CREATE INDEX "mine ""customers"" name" ON customers (name)',
        "CREATE UNIQUE INDEX mine_customers_id_name ON customers (customer_id, name)",
    )
    source = NdjsonSource(path)
    try:
        shadow_rebuild(database.engine, source, database.settings())
        indexes = {i["name"]: i for i in sa.inspect(database.engine).get_indexes("customers")}
    finally:
        source.close()
        _drop_indexes(database, '"mine ""customers"" name"', "mine_customers_id_name")
    assert indexes['mine "customers" name']["column_names"] == ["name"]
    assert indexes["mine_customers_id_name"]["unique"]
    assert "ix_customers_status" in indexes  # and the model's own
    with database.engine.connect() as connection:
        named = connection.execute(
            sa.text("SELECT count(*) FROM customers WHERE name = 'Name 3'")
        ).scalar_one()
    assert named == 7


def test_the_sqlite_swap_sorts_on_disk_and_gives_the_connection_back_as_it_was(
    tmp_path: Path,
) -> None:
    """Index builds over whole tables spill to a file, not to memory; the pool is unchanged."""
    from projections.db import create_engine
    from projections.shadow import _attached

    live = create_engine(sa.make_url(f"sqlite:///{tmp_path / 'live.db'}"))
    shadow = create_engine(sa.make_url(f"sqlite:///{tmp_path / 'shadow.db'}"))
    try:
        with live.connect() as connection:
            before = connection.exec_driver_sql("PRAGMA temp_store").scalar_one()
        with _attached(live, shadow, "shadow") as connection:
            assert connection.exec_driver_sql("PRAGMA temp_store").scalar_one() == 1  # FILE
        with live.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA temp_store").scalar_one() == before == 2
    finally:
        live.dispose()
        shadow.dispose()


def test_a_users_index_the_rebuilt_rows_break_fails_the_rebuild_and_keeps_the_live_model(
    database: Database,
) -> None:
    """A unique index the new rows violate: a clear error, and the live tables untouched."""
    _customers_with_indexes(
        database,
        [f"Name {i}" for i in range(5)],
        'CREATE UNIQUE INDEX "one ""name""" ON customers (name)',
    )
    before = database.snapshot()
    second = write_log(
        database.tmp / "second.ndjson",
        [ev("CustomerCreated", f"cus_{i}", 1, name="Same") for i in range(5)],
    )
    source = NdjsonSource(second)
    try:
        with pytest.raises(RebuildError, match=r'one "name".*drop or change it'):
            shadow_rebuild(database.engine, source, database.settings())
        assert database.snapshot() == before
        names = {i["name"] for i in sa.inspect(database.engine).get_indexes("customers")}
        assert 'one "name"' in names
    finally:
        source.close()
        _drop_indexes(database, '"one ""name"""')


def _customers_with_indexes(database: Database, names: list[str], *indexes: str) -> Path:
    """Project one customer per name, then add the indexes (SQL); the log's path."""
    path = write_log(
        database.tmp / "customers.ndjson",
        [ev("CustomerCreated", f"cus_{i}", 1, name=name) for i, name in enumerate(names)],
    )
    database.project(path)
    with database.engine.begin() as connection:
        for statement in indexes:
            connection.exec_driver_sql(statement)
    return path


def _drop_indexes(database: Database, *names: str) -> None:
    """Indexes a test added: the next test reuses this database."""
    with database.engine.begin() as connection:
        for name in names:
            connection.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")


def test_a_rebuild_leaves_out_an_index_postgresql_marked_invalid(
    postgres_database: Database,
) -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves an invalid index: it is not built again."""
    database = postgres_database
    path = _customers_with_indexes(database, ["Same", "Same", "Other"])
    autocommit = database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(sa.exc.IntegrityError):
            autocommit.exec_driver_sql(
                "CREATE UNIQUE INDEX CONCURRENTLY half_built ON customers (name)"
            )
        source = NdjsonSource(path)
        try:
            shadow_rebuild(database.engine, source, database.settings())
        finally:
            source.close()
        assert database.count("customers") == 3
        names = {i["name"] for i in sa.inspect(database.engine).get_indexes("customers")}
        assert "half_built" not in names  # it stayed with the old table
    finally:
        autocommit.close()
        _drop_indexes(database, "half_built")


def test_once_one_tables_finish_fails_no_other_table_is_started(
    postgres_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexes and statistics are built two tables at a time; the first failure ends it."""
    db = postgres_database
    log = _log(db, 300)
    db.project(log)
    before = db.snapshot()
    started: list[str] = []
    finish = Shadow._finish

    def failing_first(shadow: Shadow, table: str) -> None:
        started.append(table)
        if len(started) == 1:
            raise RuntimeError("could not extend file: No space left on device")
        time.sleep(0.5)  # the other connection is still busy when the failure is seen
        finish(shadow, table)

    monkeypatch.setattr(Shadow, "_finish", failing_first)
    source = NdjsonSource(log)
    try:
        with pytest.raises(RuntimeError, match="No space left"):
            shadow_rebuild(db.engine, source, db.settings())
    finally:
        source.close()
    # The failing table, and at most the one the other connection had begun.
    assert 1 <= len(started) <= 2, started
    assert db.snapshot() == before
    assert _leftovers(db) == []


def test_live_writers_are_not_held_up_while_a_rebuild_builds(database: Database) -> None:
    """Only the swap takes the writers' lock: a live run may commit during the build."""
    from projections import dialect

    db = database
    db.project(_log(db, 200))
    log = _log(db, 2000, name="rebuild.ndjson")
    live_could_write: list[bool] = []

    def during_the_build(*_: Any) -> None:
        if live_could_write:
            return
        with db.engine.connect() as connection, connection.begin():
            # PostgreSQL: the writers' advisory lock; SQLite: the live file's write lock.
            taken = dialect.try_lock_writers(connection)
            connection.exec_driver_sql("UPDATE customers SET name = name WHERE 1 = 0")
            live_could_write.append(taken)

    source = NdjsonSource(log)
    try:
        shadow_rebuild(db.engine, source, db.settings(batch_size=100), progress=during_the_build)
    finally:
        source.close()
    assert live_could_write == [True]
    assert db.count("customers") > 0


def test_a_rebuild_refuses_to_start_while_another_holds_the_shadow(database: Database) -> None:
    """A second rebuild exits 1 and leaves the running one's shadow and the live model alone."""
    db = database
    log = _log(db, 300)
    db.project(log)
    before = db.snapshot()
    running = Shadow(db.engine, ("customers", "contacts", "providers", "channels", "conversations"))
    with running.claimed("rebuild"):
        running.prepare(resume=False)
        with running.engine.begin() as connection:  # type: ignore[union-attr]
            connection.exec_driver_sql("CREATE TABLE half_built (n integer)")
            connection.exec_driver_sql("INSERT INTO half_built VALUES (7)")
        done = _rebuild(db, log)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "another rebuild is using the" in done.stderr
        assert "Traceback" not in done.stderr
        assert running.exists()
        with running.engine.connect() as connection:  # type: ignore[union-attr]
            held = connection.exec_driver_sql("SELECT n FROM half_built").scalars()
            assert list(held) == [7]
    assert db.snapshot() == before
    running.drop()
    done = _rebuild(db, log)
    assert done.returncode == 0, done.stderr
    assert db.snapshot() == before
    assert _leftovers(db) == []


def test_verify_refuses_to_start_while_another_verify_runs(database: Database) -> None:
    """Two verifies at once would drop each other's scratch tables: the second exits 1."""
    from projections.verify import SCRATCH

    db = database
    log = _log(db, 200)
    db.project(log)
    args = ("verify", "--source", str(log), "--database-url", db.url_text)
    with Shadow(db.engine, ("customers",), name=SCRATCH).claimed("verify"):
        done = cli(*args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "another verify is using the" in done.stderr
        assert _rebuild(db, log).returncode == 0  # a rebuild uses a shadow of its own
    done = cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _leftovers(db) == []


def _advisory_holders(db: Database, name: str) -> list[int]:
    """Backends of this database holding the session claim on `name` (PostgreSQL)."""
    from projections.dialect import lock_key

    unsigned = lock_key(f"claim:{name}") & 0xFFFFFFFFFFFFFFFF
    with db.engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database()) AND classid::bigint = :high AND objid::bigint = :low"
                ),
                {"high": unsigned >> 32, "low": unsigned & 0xFFFFFFFF},
            ).scalars()
        )


def test_a_finished_rebuild_lets_the_next_one_claim_the_shadow(database: Database) -> None:
    """The claim goes with the rebuild, even on the pooled connections of one process."""
    from projections.db import create_engine

    db = database
    log = _log(db, 200)
    for _ in range(2):
        source = NdjsonSource(log)
        try:
            result, report, _ = shadow_rebuild(db.engine, source, db.settings())
        finally:
            source.close()
        assert report is not None and result.position == 200
    with (
        pytest.raises(RebuildError, match="boom"),
        Shadow(db.engine, ("customers",)).claimed("rebuild"),
    ):
        raise RebuildError("boom")
    if db.kind == "postgres":
        assert _advisory_holders(db, "projections_shadow") == []
    other = create_engine(db.url)  # another pool: a leaked session lock would refuse it
    try:
        with Shadow(other, ("customers",)).claimed("rebuild"):
            pass
    finally:
        other.dispose()
    assert _leftovers(db) == []


def test_a_rebuild_that_loses_its_claim_swaps_nothing_and_drops_nothing(
    database: Database,
) -> None:
    """Its session killed (or its lock file removed) mid-build: a clear error, no swap."""
    db = database
    db.project(_log(db, 100))
    before = db.snapshot()
    log = _log(db, 1500, name="rebuild.ndjson")

    def lose_the_claim(*_: Any) -> None:
        if db.kind == "postgres":
            with db.engine.connect() as connection:
                for pid in _advisory_holders(db, "projections_shadow"):
                    connection.execute(sa.select(sa.func.pg_terminate_backend(pid)))
        else:
            lock = db.tmp / "projections.db.projections_shadow.lock"
            if lock.exists():
                lock.unlink()

    source = NdjsonSource(log)
    try:
        with pytest.raises(RebuildError, match="lost its hold on the"):
            shadow_rebuild(db.engine, source, db.settings(batch_size=100), progress=lose_the_claim)
    finally:
        source.close()
    assert db.snapshot() == before
    assert Shadow(db.engine, ("customers",)).exists()  # another rebuild's, for all it knows
    done = _rebuild(db, log)
    assert done.returncode == 0, done.stderr
    assert _leftovers(db) == []


def test_a_lock_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    """SQLite only (PostgreSQL has no lock file): exit 1 with the file's name, no traceback."""
    database = tmp_path / "projections.db"
    url = f"sqlite:///{database}"
    log = tmp_path / "log.ndjson"
    log.write_bytes(b"".join(generate(100, seed=3)))
    assert cli("run", "--source", str(log), "--database-url", url).returncode == 0
    blocker = tmp_path / "projections.db.projections_shadow.lock"
    blocker.mkdir()  # a directory where the lock file goes: it cannot be opened for writing
    done = cli("rebuild", "--source", str(log), "--database-url", url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot lock the file" in done.stderr
    assert "Traceback" not in done.stderr
    assert blocker.is_dir()  # nothing of the first claimant's was removed
    blocker.rmdir()
    assert cli("rebuild", "--source", str(log), "--database-url", url).returncode == 0


def test_a_rebuild_keeps_the_partial_idempotency_index(database: Database) -> None:
    """The swapped-in ledger's idempotency index still leaves out rows without a key (a
    shadow builds its indexes anew on PostgreSQL, and SQLite's are dropped around the copy)."""
    done = _rebuild(database, _log(database, 300))
    assert done.returncode == 0, done.stderr
    assert partial_idempotency_index(database)
