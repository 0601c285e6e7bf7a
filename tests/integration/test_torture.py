"""The fault campaign (scripts/torture.py) in its short form, and one test per defect it found.

The campaign tests run `scripts/torture.py --short --seed 1` once per campaign, and check that
the script exits 0 and prints a line per database with 0 failures. Each defect the campaign
found is pinned below as the smallest case that failed before its fix.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from projections.db import create_engine
from projections.generator import Noise, generate
from projections.migrate import upgrade
from tests.conftest import ADMIN_URL
from tests.helpers import Database, cli, ev, write_log

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "torture.py"
PRODUCT = (sys.executable, "-m", "projections")
CAMPAIGNS = ("kill", "db-faults", "concurrency", "hostile", "load")


@pytest.mark.slow
@pytest.mark.parametrize(
    "campaign",
    [c for c in CAMPAIGNS],
)
def test_short_torture_campaign_passes(campaign: str, tmp_path: Path, postgres_server: URL) -> None:
    """`torture.py --short --seed 1` for one campaign: exit 0, no failure on either database."""
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--short",
            "--seed",
            "1",
            "--campaign",
            campaign,
            "--pg-admin-url",
            ADMIN_URL,
            "--json-out",
            str(figures),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    table = [line for line in done.stdout.splitlines() if line.startswith(campaign + " ")]
    assert {line.split()[1] for line in table} == {"sqlite", "postgres"}, done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for line in table:
        assert line.split()[3] == "0", line
    report = json.loads(figures.read_text())
    assert report["passed"] is True
    assert all(c["failures"] == 0 and c["trials"] > 0 for c in report["campaigns"])


# --------------------------------------------------------------------------- defects


@pytest.fixture
def fresh_postgres(postgres_server: URL) -> Iterator[URL]:
    """An empty PostgreSQL database without any schema, dropped afterwards."""
    name = f"projections_torture_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.set(database=name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _dsn(url: URL) -> str:
    return _text(url.set(drivername="postgresql"))


def _small_log(path: Path) -> Path:
    return write_log(
        path,
        [
            ev("CustomerCreated", "cus_1", name="Acme"),
            ev("ContactCreated", "con_1", display_name="Ada"),
            ev("CustomerUpdated", "cus_1", 2, changed_fields={"name": "Acme Inc"}),
        ],
    )


def test_a_process_starting_while_another_migrates_waits_for_it(
    fresh_postgres: URL, tmp_path: Path
) -> None:
    """A `run` started while another process's migration is uncommitted must not fail."""
    log = _small_log(tmp_path / "log.ndjson")
    engine = create_engine(fresh_postgres)
    paused, resume = threading.Event(), threading.Event()

    def hold_the_first_commit(connection: sa.Connection) -> None:
        if not paused.is_set():
            paused.set()
            resume.wait(60)

    sa.event.listen(engine, "commit", hold_the_first_commit)
    first = threading.Thread(target=upgrade, args=(engine,))
    first.start()
    assert paused.wait(60), "the first migration never reached its commit"
    second = subprocess.Popen(
        [*PRODUCT, "run", "--source", str(log), "--database-url", _text(fresh_postgres)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and second.poll() is None:
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    (fresh_postgres.database,),
                ).fetchone()
                if waiting and waiting[0]:
                    break  # the second process waits for the first one's migration
                time.sleep(0.1)
    finally:
        resume.set()
        first.join(60)
        engine.dispose()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err


def _lock_timeout_database(url: URL) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{url.database}\" SET lock_timeout = '300ms'")


def test_a_driver_error_in_a_batch_is_reported_not_a_traceback(
    fresh_postgres: URL, tmp_path: Path
) -> None:
    """A lock timeout inside a batch: exit 1 with 'database error: ...', never a traceback."""
    log = _small_log(tmp_path / "log.ndjson")
    url = _text(fresh_postgres)
    assert cli("migrate", "--database-url", url).returncode == 0
    _lock_timeout_database(fresh_postgres)
    # processed_events is first read by dialect/pg.py's fetch_seen, on the raw cursor.
    with psycopg.connect(_dsn(fresh_postgres)) as holder:
        holder.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
        done = cli("run", "--source", str(log), "--database-url", url)
        holder.rollback()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert "database error" in done.stderr and "lock timeout" in done.stderr


@pytest.mark.slow
def test_follow_survives_losing_its_listen_connection(fresh_postgres: URL) -> None:
    """Terminate follow's LISTEN backend: it goes on (or at worst exits 1), never a traceback."""
    url = _text(fresh_postgres)
    assert cli("migrate", "--database-url", url).returncode == 0
    follow = subprocess.Popen(
        [*PRODUCT, "follow", "--source", "db", "--database-url", url, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            listening = (
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'"
            )
            deadline = time.monotonic() + 60
            while not admin.execute(listening, (fresh_postgres.database,)).fetchall():
                assert time.monotonic() < deadline, "follow never started listening"
                time.sleep(0.1)
            admin.execute(
                f"SELECT pg_terminate_backend(pid) FROM ({listening}) AS l",
                (fresh_postgres.database,),
            )
        time.sleep(3)
        if follow.poll() is None:  # still running: it must still apply new events
            with psycopg.connect(_dsn(fresh_postgres), autocommit=True) as writer:
                writer.execute(
                    "INSERT INTO event_log (event_id, event_name, aggregate_type, aggregate_id, "
                    "version, event) VALUES ('e1', 'CustomerCreated', 'Customer', 'cus_1', 1, "
                    "%s::jsonb)",
                    (json.dumps(ev("CustomerCreated", "cus_1", event_id="e1", name="Acme")),),
                )
                deadline = time.monotonic() + 20
                while not writer.execute("SELECT 1 FROM customers").fetchall():
                    assert time.monotonic() < deadline, "follow stopped applying events"
                    time.sleep(0.1)
            follow.send_signal(signal.SIGTERM)
    finally:
        if follow.poll() is None:
            follow.send_signal(signal.SIGTERM)
        _, err = follow.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert follow.returncode in (0, 1), err


def _limit_file_size() -> None:
    """In the child: writes beyond 64 KiB fail with EFBIG (a full disk, without a tmpfs)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_a_rebuild_that_fails_on_sqlite_removes_its_shadow(tmp_path: Path) -> None:
    """README: a rebuild that fails leaves the live model untouched and removes its shadow."""
    log = _small_log(tmp_path / "log.ndjson")
    path = tmp_path / "live.db"
    url = f"sqlite:///{path}"
    assert cli("run", "--source", str(log), "--database-url", url).returncode == 0
    failed = subprocess.run(
        [*PRODUCT, "rebuild", "--source", str(log), "--database-url", url],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
    )
    assert failed.returncode == 1, failed.stderr  # the fault did happen
    assert "Traceback" not in failed.stderr
    left = Path(f"{path}.projections_shadow").exists()
    resumed = cli("rebuild", "--resume", "--source", str(log), "--database-url", url)
    assert not left, "the failed rebuild left its shadow behind"
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_verify_that_fails_while_comparing_exits(fresh_postgres: URL, tmp_path: Path) -> None:
    """A comparison query that fails must end verify with exit 1, not hang it."""
    lines = generate(2000, seed=11, aggregates=2000 // 6, noise=Noise.default())
    log = tmp_path / "log.ndjson"
    log.write_bytes(b"".join(lines))
    url = _text(fresh_postgres)
    assert cli("run", "--source", str(log), "--database-url", url).returncode == 0
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{fresh_postgres.database}\" SET work_mem = '64kB'")
        admin.execute(f'ALTER DATABASE "{fresh_postgres.database}" SET temp_file_limit = 0')
    try:
        done = subprocess.run(
            [*PRODUCT, "verify", "--source", str(log), "--database-url", url],
            capture_output=True,
            text=True,
            timeout=45,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("verify hung after a failed comparison query")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr


def _deep_line(depth: int) -> bytes:
    return b'{"event_id": "deep", "payload": ' + b"[" * depth + b"]" * depth + b"}"


def test_import_skips_a_line_nested_deeper_than_the_limit(
    database: Database, tmp_path: Path
) -> None:
    """One line nested 300 deep among good ones: import stores the good ones, exit 0."""
    good = ev("CustomerCreated", "cus_1", name="Acme")
    log = write_log(tmp_path / "deep.ndjson", [good, _deep_line(300)])
    done = cli("import", str(log), "--database-url", database.url_text)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    stored = [row["event_id"] for row in database.rows("event_log")]
    assert good["event_id"] in stored


def test_import_survives_an_over_long_event_name_or_aggregate_id(
    postgres_database: Database, tmp_path: Path
) -> None:
    """Long values go to quarantine at projection time; they must not sink the import."""
    rng = random.Random(7)
    noise = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=4000))
    good = ev("CustomerCreated", "cus_1", name="Acme")
    long_id = ev("CustomerCreated", "cus_2", name="Globex")
    long_id["aggregate_id"] = long_id["payload"]["customer_id"] = noise
    long_name = ev("CustomerCreated", "cus_3", name="Initech")
    long_name["event_name"] = noise
    log = write_log(tmp_path / "long.ndjson", [good, long_id, long_name])
    done = cli("import", str(log), "--database-url", postgres_database.url_text)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    stored = [row["event_id"] for row in postgres_database.rows("event_log")]
    assert good["event_id"] in stored
    projected = cli("run", "--source", "db", "--database-url", postgres_database.url_text)
    assert projected.returncode == 0, projected.stderr
    assert postgres_database.row("customers", "cus_1") is not None


def test_torture_refuses_an_unknown_campaign() -> None:
    """Bad usage exits 2 before touching any database."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--campaign", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown campaign" in done.stderr
