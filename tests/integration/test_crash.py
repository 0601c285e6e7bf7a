"""Crash safety: a process SIGKILLed at any instant, then `run`, equals an uninterrupted rebuild.

`projections rebuild` builds a shadow read model and swaps it in at the end, so killing it
must leave the live read model exactly as it was (or, past the swap, complete). The batch
transactions on the live tables are `run`'s, so half the trials kill a `run` that started
from an empty read model instead: its checkpoints must never be torn, and the `run` after
it must finish the log with the same tables as a run that never crashed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import orjson
import psycopg
import pytest
import sqlalchemy as sa

from projections import dialect, store
from projections.config import normalise_url
from projections.generator import Noise, generate
from projections.store import PROJECTORS
from projections.tables import TABLES
from tests.conftest import ADMIN_URL
from tests.helpers import Database, cli

EVENTS = 20_000
TRIALS = 10


@contextmanager
def _reference_database(database: Database) -> Iterator[Database]:
    """A second, empty database of the same kind, gone afterwards."""
    if database.kind == "sqlite":
        path = database.tmp / f"reference-{uuid.uuid4().hex[:8]}.db"
        reference = Database("sqlite", normalise_url(f"sqlite:///{path}"), database.tmp)
        try:
            yield reference
        finally:
            reference.close()
        return
    name = f"projections_crash_ref_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    reference = Database("postgres", database.url.set(database=name), database.tmp)
    try:
        yield reference
    finally:
        reference.close()
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _processed_ids(database: Database) -> tuple[int, int]:
    with database.engine.connect() as connection:
        total, distinct = connection.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM processed_events")
        ).one()
    return int(total), int(distinct)


def _empty(database: Database) -> None:
    """Empty the live read model, as a crash before any batch would have left it."""
    with database.engine.begin() as connection:
        dialect.lock_writers(connection)
        store.reset(connection)


def _drop_leftovers(database: Database) -> None:
    """Remove what killed rebuilds left behind (a shadow schema) from the shared database."""
    if database.kind != "postgres":
        return
    with database.engine.begin() as connection:
        names = connection.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'projections\\_shadow%' "
                "OR nspname LIKE 'projections\\_old\\_%'"
            )
        ).scalars()
        for name in list(names):
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _committed(database: Database) -> bool:
    """Whether any checkpoint has moved: a run has committed at least one batch."""
    table = TABLES["projection_checkpoints"]
    # read_only: on SQLite a plain transaction would take the write lock from the run.
    with database.engine.connect().execution_options(read_only=True) as connection:
        return bool(connection.execute(sa.select(sa.func.max(table.c.position))).scalar())


def _kill_after(
    args: list[str],
    delay: float,
    commit_seconds: str,
    committed: Callable[[], bool] | None = None,
) -> tuple[bool, int, str]:
    """Start `python -m projections ARGS`, SIGKILL it after `delay` s unless it has ended.

    With `committed`, the delay counts from the moment it first answers true (polled),
    so the kill lands after a commit, however long the process took to start.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "projections", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PROJECTIONS_COMMIT_SECONDS": commit_seconds},
    )
    if committed is not None:
        while process.poll() is None and not committed():
            time.sleep(0.01)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    return killed, process.returncode, stderr.decode(errors="replace")


@pytest.mark.slow
def test_a_process_killed_at_any_instant_then_run_equals_an_uninterrupted_rebuild(
    database: Database, tmp_path: Path
) -> None:
    """SIGKILL rebuilds and runs at random instants; `run` afterwards gives the same tables."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    log = tmp_path / "crash.ndjson"
    log.write_bytes(b"".join(generate(EVENTS, seed=seed, noise=Noise.default())))
    source = ["--source", str(log), "--database-url"]
    full = dict.fromkeys(PROJECTORS, EVENTS)

    with _reference_database(database) as reference:
        started = time.monotonic()
        done = cli("rebuild", *source, reference.url_text, "--batch-size", "500")
        duration = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        expected = reference.snapshot()
        assert reference.checkpoints() == full
        started = time.monotonic()
        idle = cli("run", *source, reference.url_text)
        startup = time.monotonic() - started  # a process that finds nothing to do
        assert idle.returncode == 0, idle.stderr
    assert sum(len(rows) for rows in expected.values()) > EVENTS // 2

    outcomes: list[tuple[str, int, float, int | None]] = []
    try:
        for trial in range(TRIALS):
            verb = "rebuild" if trial % 2 == 0 else "run"
            if verb == "run":
                _empty(database)  # the killed run has the whole log ahead of it
            before = database.checkpoints()
            batch = rng.randint(50, 500)
            # Some kills come early (start-up, the first batches), the rest anywhere, a few
            # rebuilds near their swap. Reading, decoding and writing a batch all happen
            # inside its transaction, so nearly every instant after start-up lies in one.
            committed = None
            if trial % 4 == 1:
                delay = rng.uniform(0.6 * startup, startup + 0.8)
            elif verb == "rebuild":
                delay = rng.uniform(0.15, 1.05) * duration
            else:
                # After its first commit, at a random instant: a delay timed from the
                # start could fall in start-up on a busy machine, and no kill would test
                # a run that had committed part of the log.
                delay = rng.uniform(0.0, 0.3)
                committed = partial(_committed, database)
            # Runs commit every batch or every 0.1 s, so kills land between commits; a
            # rebuild may also hold everything in one transaction (the default).
            commit = rng.choice(["0", "0.1"] if verb == "run" else ["0", "30"])
            args = [verb, *source, database.url_text, "--batch-size", str(batch)]
            killed, code, stderr = _kill_after(args, delay, commit, committed)
            context = (
                f"seed {seed}, trial {trial}: {verb}, batch {batch}, commit every {commit}s, "
                f"delay {delay:.2f}s"
            )
            if not killed:
                assert code == 0, f"{context}: {stderr}"

            after = database.checkpoints()
            assert len(set(after.values())) <= 1, f"{context}: torn checkpoints {after}"
            if verb == "rebuild":
                assert after in (before, full), f"{context}: live model changed to {after}"
            outcomes.append((verb, batch, delay, next(iter(after.values()), None)))

            recovered = cli("run", *source, database.url_text, "--batch-size", "5000", "--json")
            assert recovered.returncode == 0, f"{context}: {recovered.stderr}"
            if after == full:
                assert orjson.loads(recovered.stdout)["read"] == 0, context
            assert database.checkpoints() == full, context
            total, distinct = _processed_ids(database)
            assert total == distinct == len(expected["processed_events"]), context
            actual = database.snapshot()
            for table, rows in expected.items():
                assert actual[table] == rows, f"{context}: table {table} differs"
    finally:
        _drop_leftovers(database)

    midway = [o for o in outcomes if o[0] == "run" and o[3] is not None and 0 < o[3] < EVENTS]
    assert midway, f"seed {seed}: no kill landed in the middle of a run: {outcomes}"
