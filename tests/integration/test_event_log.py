"""The database event log: import, projecting from it, producers' INSERTs, late commits."""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import sqlalchemy as sa

from projections.generator import Noise, generate
from projections.importer import import_log
from projections.projector import catch_up, rebuild
from projections.sources.eventlog import EventLogSource
from projections.status import read_status
from tests.helpers import Database, cli, ev, write_log

PRODUCER_INSERT = """
INSERT INTO event_log (event_id, event_name, aggregate_type, aggregate_id, occurred_at,
                       version, idempotency_key, event)
VALUES (:event_id, :event_name, :aggregate_type, :aggregate_id, :occurred_at,
        :version, :idempotency_key, :event)
"""


def _generated(tmp: Path, events: int = 1500, seed: int = 5) -> Path:
    path = tmp / "gen.ndjson"
    path.write_bytes(b"".join(generate(events, seed=seed, noise=Noise.default())))
    return path


def _entity_tables(db: Database) -> dict[str, list[dict[str, Any]]]:
    snapshot = db.snapshot()
    return {
        k: v
        for k, v in snapshot.items()
        if k not in ("processed_events", "event_anomalies", "quarantined_events")
    }


def _import(db: Database, path: Path, strict: bool = False) -> Any:
    return import_log(db.engine, path, strict=strict)


def test_import_stores_each_event_once_with_envelope_columns(database: Database) -> None:
    """import stores envelope fields in columns and the whole event; re-import adds nothing."""
    events = [
        ev("CustomerCreated", "cus_1", name="A", idempotency_key="k1"),
        ev("ContactCreated", "con_1", 1, display_name="B"),
    ]
    log = write_log(database.tmp / "two.ndjson", events)
    first = _import(database, log)
    assert (first.read, first.stored, first.already, first.bad) == (2, 2, 0, [])
    again = _import(database, log)
    assert (again.stored, again.already) == (0, 2)
    rows = database.rows("event_log")
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in events]
    assert rows[0]["event_name"] == "CustomerCreated"
    assert rows[0]["aggregate_type"] == "Customer"
    assert rows[0]["aggregate_id"] == "cus_1"
    assert rows[0]["version"] == 1
    assert rows[0]["idempotency_key"] == "k1"
    assert rows[0]["occurred_at"].isoformat().startswith(events[0]["occurred_at"][:19])
    assert rows[0]["event"] == events[0]
    assert rows[0]["position"] < rows[1]["position"]


def test_import_reports_unstorable_lines_by_number(database: Database) -> None:
    """Lines that are not storable JSON objects are reported with their line numbers."""
    log = write_log(
        database.tmp / "bad.ndjson",
        [
            ev("CustomerCreated", "cus_1", name="A"),
            "{broken",
            b'{"event_id": "x\xff"}',
            '{"event_id": "nul", "name": "a\\u0000b"}',
            "[1, 2]",
            '{"event_name": "CustomerCreated"}',
            ev("CustomerCreated", "cus_2", name="B"),
        ],
    )
    result = _import(database, log)
    assert result.stored == 2
    assert [(b["line"], b["reason"]) for b in result.bad] == [
        (2, "invalid_json"),
        (3, "invalid_utf8"),
        (4, "nul_character"),
        (5, "not_an_object"),
        (6, "invalid_event_id"),
    ]
    assert database.count("event_log") == 2


def test_strict_import_writes_nothing_when_a_line_is_bad(database: Database) -> None:
    """--strict refuses the whole file when any line is bad, and exits 1."""
    log = write_log(database.tmp / "bad.ndjson", [ev("CustomerCreated", "cus_1", name="A"), "{x"])
    done = cli("import", str(log), "--strict", "--database-url", database.url_text)
    assert done.returncode == 1
    assert "line 2" in done.stdout
    assert database.count("event_log") == 0


def test_import_cli_summary_counts_what_was_already_there(database: Database) -> None:
    """The import summary says how many events were already in the log."""
    log = write_log(database.tmp / "one.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    assert cli("import", str(log), "--database-url", database.url_text).returncode == 0
    done = cli("import", str(log), "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["already_there"] == 1


def test_projecting_the_event_log_gives_the_file_tables(database: Database, tmp_path: Path) -> None:
    """rebuild --source db yields the same tables and quarantine reasons as the NDJSON file."""
    log = _generated(tmp_path)
    database.project(log, fresh=True)
    from_file = _entity_tables(database)
    file_quarantine = database.rows("quarantined_events")
    imported = _import(database, log)
    refused = {bad["line"] for bad in imported.bad}
    source = EventLogSource(database.engine)
    result = rebuild(database.engine, source, database.settings(batch_size=250))
    assert _entity_tables(database) == from_file
    db_reasons = sorted(r["reason"] for r in database.rows("quarantined_events"))
    # Lines import refused never reach event_log; every other line is judged the same.
    expected = sorted(r["reason"] for r in file_quarantine if r["position"] not in refused)
    assert db_reasons == expected
    assert result.counters.read == database.count("event_log")


def test_run_from_db_catches_up_only_new_rows(database: Database) -> None:
    """A second run applies only rows appended since the first."""
    log = write_log(database.tmp / "a.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    _import(database, log)
    source = EventLogSource(database.engine)
    assert catch_up(database.engine, source, database.settings()).counters.applied == 1
    assert catch_up(database.engine, source, database.settings()).counters.read == 0
    more = write_log(database.tmp / "b.ndjson", [ev("CustomerCreated", "cus_2", name="B")])
    _import(database, more)
    assert catch_up(database.engine, source, database.settings()).counters.applied == 1
    assert {r["customer_id"] for r in database.rows("customers")} == {"cus_1", "cus_2"}


def test_producers_can_append_with_plain_sql(database: Database) -> None:
    """The INSERT statement the README gives producers is projected like an import."""
    event = ev("CustomerCreated", "cus_7", name="Plain SQL")
    with database.engine.begin() as connection:
        connection.execute(
            sa.text(PRODUCER_INSERT),
            {
                "event_id": event["event_id"],
                "event_name": event["event_name"],
                "aggregate_type": event["aggregate_type"],
                "aggregate_id": event["aggregate_id"],
                "occurred_at": event["occurred_at"],
                "version": event["version"],
                "idempotency_key": None,
                "event": orjson.dumps(event).decode(),
            },
        )
    result = catch_up(database.engine, EventLogSource(database.engine), database.settings())
    assert result.counters.applied == 1
    assert database.row("customers", "cus_7")["name"] == "Plain SQL"  # type: ignore[index]


def test_a_replaced_event_log_is_refused(database: Database) -> None:
    """Emptying event_log after a run makes the next run refuse with exit code 2."""
    log = write_log(database.tmp / "a.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    _import(database, log)
    assert cli("run", "--source", "db", "--database-url", database.url_text).returncode == 0
    with database.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM event_log"))
    done = cli("run", "--source", "db", "--database-url", database.url_text)
    assert done.returncode == 2
    assert "rebuild" in done.stderr


def test_log_url_keeps_the_event_log_in_another_database(tmp_path: Path) -> None:
    """--log-url imports into and projects from a separate database."""
    log = write_log(tmp_path / "a.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    model = f"sqlite:///{tmp_path / 'model.db'}"
    events = f"sqlite:///{tmp_path / 'events.db'}"
    assert cli("import", str(log), "--database-url", model, "--log-url", events).returncode == 0
    done = cli("run", "--source", "db", "--database-url", model, "--log-url", events, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 1
    engine = sa.create_engine(model)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from event_log")).scalar() == 0
        assert connection.execute(sa.text("select count(*) from customers")).scalar() == 1
    engine.dispose()


# --- never skip a late commit -------------------------------------------------------------


def _psycopg_dsn(db: Database) -> str:
    return db.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _insert(connection: psycopg.Connection[Any], event_id: str) -> None:
    event = ev("CustomerCreated", event_id, name=event_id, event_id=event_id)
    connection.execute(
        "INSERT INTO event_log (event_id, event_name, aggregate_type, aggregate_id, version, event)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (event_id, "CustomerCreated", "Customer", event_id, 1, orjson.dumps(event).decode()),
    )


def _writer(dsn: str, name: str, seed: int, transactions: int, committed: Any) -> None:
    """Insert events in transactions of random size, some held open, some rolled back."""
    rnd = random.Random(seed)
    with psycopg.connect(dsn, application_name=f"writer-{name}") as connection:
        for t in range(transactions):
            ids = [f"{name}-{t}-{i}" for i in range(rnd.randint(1, 5))]
            for event_id in ids:
                _insert(connection, event_id)
                if rnd.random() < 0.3:
                    time.sleep(rnd.uniform(0, 0.02))
            if rnd.random() < 0.3:
                time.sleep(rnd.uniform(0.01, 0.15))  # hold the transaction open
            if rnd.random() < 0.15:
                connection.rollback()
            else:
                connection.commit()
                committed.extend(ids)


def _naive_reader(dsn: str, stop: threading.Event, seen: set[str]) -> None:
    """The bug this product avoids: move the checkpoint to the highest position seen."""
    checkpoint = 0
    with psycopg.connect(dsn, autocommit=True) as connection:
        while True:
            last_round = stop.is_set()
            rows = connection.execute(
                "SELECT position, event_id FROM event_log WHERE position > %s ORDER BY position",
                (checkpoint,),
            ).fetchall()
            for position, event_id in rows:
                seen.add(event_id)
                checkpoint = max(checkpoint, position)
            if last_round:
                return
            time.sleep(0.002)


def _concurrent_trial(db: Database, seed: int) -> tuple[set[str], set[str], int]:
    """Writers race the projector and a naive reader; returns committed, naive-seen, duplicates."""
    dsn = _psycopg_dsn(db) if db.kind == "postgres" else ""
    manager = multiprocessing.Manager()
    committed = manager.list()
    context = multiprocessing.get_context("fork")
    if db.kind == "postgres":
        writers = [
            context.Process(
                target=_writer, args=(dsn, f"w{seed}x{n}", seed * 10 + n, 25, committed)
            )
            for n in range(4)
        ]
    else:
        writers = [
            context.Process(
                target=_sqlite_writer,
                args=(str(db.url.database), f"w{seed}x{n}", seed + n, 25, committed),
            )
            for n in range(3)
        ]
    stop = threading.Event()
    naive_seen: set[str] = set()
    naive = threading.Thread(target=_naive_reader, args=(dsn, stop, naive_seen))
    if db.kind == "postgres":
        naive.start()
    source = EventLogSource(db.engine)
    duplicates = 0
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        duplicates += catch_up(db.engine, source, db.settings(batch_size=7)).counters.duplicate
        time.sleep(0.003)
    for writer in writers:
        writer.join()
    stop.set()
    if db.kind == "postgres":
        naive.join()
    duplicates += catch_up(db.engine, source, db.settings()).counters.duplicate
    result = set(committed)
    manager.shutdown()
    return result, naive_seen, duplicates


def _sqlite_writer(path: str, name: str, seed: int, transactions: int, committed: Any) -> None:
    """SQLite writers: random transaction sizes, holds and rollbacks, one writer at a time."""
    import sqlite3

    rnd = random.Random(seed)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    for t in range(transactions):
        ids = [f"{name}-{t}-{i}" for i in range(rnd.randint(1, 5))]
        connection.execute("BEGIN IMMEDIATE")
        for event_id in ids:
            event = ev("CustomerCreated", event_id, name=event_id, event_id=event_id)
            connection.execute(
                "INSERT INTO event_log (event_id, event_name, aggregate_type, aggregate_id, "
                "version, event) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    "CustomerCreated",
                    "Customer",
                    event_id,
                    1,
                    orjson.dumps(event).decode(),
                ),
            )
        if rnd.random() < 0.2:
            time.sleep(rnd.uniform(0.001, 0.02))
        if rnd.random() < 0.15:
            connection.execute("ROLLBACK")
        else:
            connection.execute("COMMIT")
            committed.extend(ids)
    connection.close()


@pytest.mark.slow
def test_concurrent_writers_never_cause_a_skip_or_a_double(database: Database) -> None:
    """Out-of-order commits, long transactions and rollbacks: exactly the committed events apply.

    A naive reader that keeps the highest position it saw runs beside it on PostgreSQL and
    must miss some events over the trials, which proves the trials can expose a skip.
    """
    naive_missed = 0
    for trial in range(4):
        committed, naive_seen, duplicates = _concurrent_trial(database, seed=trial + 1)
        customers = {r["customer_id"] for r in database.rows("customers")}
        expected = {event_id for event_id in committed}
        trial_ids = {c for c in customers if c.startswith(f"w{trial + 1}x")}
        assert trial_ids == expected, f"trial {trial}: missing {sorted(expected - trial_ids)[:5]}"
        assert duplicates == 0
        ledger = [r["event_id"] for r in database.rows("processed_events")]
        assert len(ledger) == len(set(ledger))
        if database.kind == "postgres":
            naive_missed += len(expected - naive_seen)
    if database.kind == "postgres":
        assert naive_missed > 0, "the naive reader never skipped: the trials prove nothing"


def test_naive_reader_skips_a_late_commit_that_ours_applies(postgres_database: Database) -> None:
    """Deterministically: a lower position committing after a higher one is skipped naively."""
    database = postgres_database
    dsn = _psycopg_dsn(database)
    source = EventLogSource(database.engine)
    with psycopg.connect(dsn) as slow, psycopg.connect(dsn) as fast:
        _insert(slow, "late")  # gets the lower position, commits last
        _insert(fast, "early")
        fast.commit()
        naive_checkpoint = max(
            p for (p,) in fast.execute("SELECT position FROM event_log").fetchall()
        )
        catch_up(database.engine, source, database.settings())
        assert database.row("customers", "early") is None  # held back behind the open one
        slow.commit()
    with psycopg.connect(dsn) as reader:
        naive_next = reader.execute(
            "SELECT event_id FROM event_log WHERE position > %s", (naive_checkpoint,)
        ).fetchall()
    assert naive_next == []  # the naive reader would never see "late"
    catch_up(database.engine, source, database.settings())
    assert database.row("customers", "late") is not None
    assert database.row("customers", "early") is not None


def test_status_names_the_transaction_holding_events_back(postgres_database: Database) -> None:
    """A long open transaction delays projection; status names its pid, age and application."""
    database = postgres_database
    dsn = _psycopg_dsn(database)
    with psycopg.connect(dsn, application_name="slow-producer") as slow:
        _insert(slow, "held")
        with psycopg.connect(dsn) as fast:
            _insert(fast, "behind")
            fast.commit()
        result = catch_up(database.engine, EventLogSource(database.engine), database.settings())
        assert result.counters.read == 0
        status = read_status(database.engine)["event_log"]
        assert status["held_back"] == 1
        blockers = status["waiting_for"]
        # Transaction ids are cluster-wide: other databases' writers may be listed too.
        ours = [b for b in blockers if b["pid"] == slow.info.backend_pid]
        assert len(ours) == 1
        assert ours[0]["application_name"] == "slow-producer"
        assert ours[0]["transaction_age_seconds"] >= 0
        text = cli("status", "--database-url", database.url_text).stdout
        assert "slow-producer" in text
        slow.commit()
    result = catch_up(database.engine, EventLogSource(database.engine), database.settings())
    assert result.counters.applied == 2


@pytest.mark.slow
def test_follow_applies_new_events_and_stops_on_sigterm(database: Database) -> None:
    """follow --source db applies rows soon after their commit and exits 0 on SIGTERM."""
    first = write_log(database.tmp / "a.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    _import(database, first)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "projections",
            "follow",
            "--source",
            "db",
            "--database-url",
            database.url_text,
            "--json",
            "--poll",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: database.row("customers", "cus_1") is not None)
        later = write_log(database.tmp / "b.ndjson", [ev("CustomerCreated", "cus_2", name="B")])
        committed_at = time.monotonic()
        _import(database, later)
        _wait_for(lambda: database.row("customers", "cus_2") is not None)
        assert time.monotonic() - committed_at < 10
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    applied = sum(json.loads(line)["applied"] for line in out.splitlines() if line.strip())
    assert applied == 2


def _wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_the_readme_insert_statement_works(database: Database) -> None:
    """The INSERT the README shows producers stores an event the projector applies."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```sql")[1:]]
    [statement] = [b for b in blocks if "INSERT INTO event_log" in b]
    with database.engine.begin() as connection:
        connection.exec_driver_sql(statement.strip().rstrip(";"))
    result = catch_up(database.engine, EventLogSource(database.engine), database.settings())
    assert result.counters.applied == 1
    assert database.row("conversations", "cnv_1")["status"] == "closed"  # type: ignore[index]


@pytest.mark.slow
def test_follow_survives_terminated_connections(postgres_database: Database) -> None:
    """follow keeps going when its backends are terminated, and applies what comes after."""
    from tests.conftest import ADMIN_URL

    database = postgres_database
    _import(
        database, write_log(database.tmp / "a.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "projections",
            "follow",
            "--source",
            "db",
            "--database-url",
            database.url_text,
            "--json",
            "--poll",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: database.row("customers", "cus_1") is not None)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'projections'",
                (database.url.database,),
            )
        _import(
            database,
            write_log(database.tmp / "b.ndjson", [ev("CustomerCreated", "cus_2", name="B")]),
        )
        _wait_for(lambda: database.row("customers", "cus_2") is not None, timeout=30)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
