#!/usr/bin/env python3
"""A fault campaign against projections, ending with a table of figures.

Five campaigns, each a number of trials, on SQLite and on a local PostgreSQL:

- kill:        SIGKILL of `run`, `rebuild` and `schedule` at random instants, then recovery.
- db-faults:   backends terminated under `run`, `schedule` and `follow`; statement timeouts;
               a full disk (a tablespace, or the SQLite file, on a tiny tmpfs);
               temp_file_limit; a SQLite write lock held elsewhere; and, in the full
               campaign only, the PostgreSQL server restarted under a scheduler and a writer.
- concurrency: writers committing to `event_log` out of order while two schedulers and a
               `follow` project it.
- hostile:     mutated events and raw bytes (a seeded mutator and hypothesis) through `run`,
               `check`, `verify`, `import` and `run --source db`.
- load:        a fixed append rate against `follow`: commit -> row-visible latency.

Every trial compares the read model with a clean in-process rebuild of the same log (the
tables must be identical) and accounts for every line of the source: read = applied + noop
+ duplicate + stale + unknown + quarantined + rejected, from the counters of the runs that
finished, else from the database (ledger, quarantine and checkpoints against a rebuild).

    python scripts/torture.py --short --seed 1      # a few small trials of each: minutes
    python scripts/torture.py --seed 7              # the full campaign, by hand

Exit code 0 when every trial passed, 1 when anything was lost, duplicated, different or
crashed, 2 on bad usage. See docs/torture.md.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import itertools
import json
import logging
import os
import pwd
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from projections.config import Settings, normalise_url  # noqa: E402
from projections.db import create_engine  # noqa: E402
from projections.generator import Noise, generate  # noqa: E402
from projections.importer import Unstorable, entry  # noqa: E402
from projections.migrate import upgrade  # noqa: E402
from projections.projector import catch_up  # noqa: E402
from projections.projector import rebuild as clean_rebuild  # noqa: E402
from projections.sources.eventlog import EventLogSource  # noqa: E402
from projections.sources.ndjson import NdjsonSource  # noqa: E402
from projections.store import read_checkpoints  # noqa: E402
from projections.tables import ENTITY_TABLES, TABLES  # noqa: E402

CAMPAIGNS = ("kill", "db-faults", "concurrency", "hostile", "load")
KINDS = ("sqlite", "postgres")
OUTCOMES = ("applied", "noop", "duplicate", "stale", "unknown", "quarantined", "rejected")
COUNTERS = ("read", *OUTCOMES, "anomalies")
TRACEBACK = "Traceback (most recent call last)"
FAULTS = {
    "postgres": ("terminate", "statement_timeout", "full_disk", "temp_file_limit", "restart"),
    "sqlite": ("locked", "full_disk"),
}
DISRUPTIVE = {"restart": "not in --short: it disrupts every user of the server"}
LOG = TABLES["event_log"]
DEFAULT_ADMIN = os.environ.get(
    "PROJECTIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass(frozen=True)
class Plan:
    """How many trials of each campaign, how big, how long."""

    trials: dict[str, int]  # per database; db-faults: rounds over every fault
    events: dict[str, int]  # generated events per trial
    seconds: dict[str, float]
    budget: float  # seconds per campaign and database after which no new trial starts
    hypothesis: int  # hypothesis examples per hostile trial


SHORT = Plan(
    trials={"kill": 3, "db-faults": 1, "concurrency": 1, "hostile": 1, "load": 1},
    events={"kill": 1200, "db-faults": 2000, "hostile": 3000},
    seconds={"concurrency": 5.0, "load": 6.0},
    budget=120.0,
    hypothesis=200,
)
FULL = Plan(
    trials={"kill": 12, "db-faults": 2, "concurrency": 3, "hostile": 4, "load": 1},
    events={"kill": 10000, "db-faults": 10000, "hostile": 26000},
    seconds={"concurrency": 20.0, "load": 60.0},
    budget=2400.0,
    hypothesis=2000,
)


class Skip(Exception):
    """A fault this machine cannot inject; the reason goes into the output line."""


# --------------------------------------------------------------------------- results


@dataclass
class Trial:
    """One trial: its problems, the events it checked and its worst moment."""

    campaign: str
    kind: str
    number: int
    label: str = ""
    problems: list[str] = field(default_factory=list)
    events: int = 0
    score: float = -1.0
    worst: str = ""

    def fail(self, text: str) -> None:
        """Record a problem: the trial fails."""
        self.problems.append(text)

    def check(self, ok: bool, text: str) -> bool:
        """Record a problem unless ok."""
        if not ok:
            self.fail(text)
        return ok

    def consider(self, score: float, text: str) -> None:
        """Keep the worst case seen (the highest score)."""
        if score > self.score:
            self.score, self.worst = score, text


@dataclass
class Tally:
    """A campaign on one database: trials, failures, events checked, worst case."""

    campaign: str
    kind: str
    trials: int = 0
    failures: int = 0
    events: int = 0
    score: float = -1.0
    worst: str = "-"
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, trial: Trial) -> None:
        """Count a finished trial."""
        self.trials += 1
        self.events += trial.events
        if trial.problems:
            self.failures += 1
            where = f"trial {trial.number}" + (f" ({trial.label})" if trial.label else "")
            self.problems.extend(f"{where}: {p}" for p in trial.problems[:6])
        if trial.score > self.score:
            self.score, self.worst = trial.score, trial.worst

    def line(self) -> str:
        """The campaign's line in the figures table."""
        extra = "".join(f"; skipped {k}: {v}" for k, v in self.skipped.items())
        extra += "".join(f"; {note}" for note in self.notes)
        return (
            f"{self.campaign:<12} {self.kind:<9} {self.trials:>6} {self.failures:>8} "
            f"{self.events:>14,} {self.seconds:>6.0f}s  {self.worst}{extra}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "campaign": self.campaign,
            "db": self.kind,
            "trials": self.trials,
            "failures": self.failures,
            "events": self.events,
            "seconds": round(self.seconds, 1),
            "worst": self.worst,
            "skipped": self.skipped,
            "notes": self.notes,
            "problems": self.problems,
        }


HEADER = (
    f"{'campaign':<12} {'db':<9} {'trials':>6} {'failures':>8} {'events checked':>14} "
    f"{'time':>7}  worst case seen"
)


# --------------------------------------------------------------------------- databases


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def harness_engine(url: str, *, application_name: str = "torture") -> sa.Engine:
    """An engine for the harness's reads and clean rebuilds: no timeouts, not 'projections'."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return create_engine(parsed)
    return sa.create_engine(
        parsed,
        connect_args={
            "application_name": application_name,
            "options": "-c timezone=UTC -c statement_timeout=0 -c temp_file_limit=-1",
            "connect_timeout": 10,
        },
        pool_pre_ping=True,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )


@contextlib.contextmanager
def reading(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection that only reads (on SQLite: a deferred transaction, no write lock)."""
    with engine.connect().execution_options(read_only=True) as connection:
        yield connection


@dataclass
class Db:
    """A database a trial writes into: a SQLite file or a PostgreSQL database."""

    kind: str
    url: str
    name: str
    path: Path | None = None
    _engine: sa.Engine | None = None

    @property
    def flag(self) -> str:
        """The --database-url option naming it."""
        return f"--database-url {self.url}"

    @property
    def engine(self) -> sa.Engine:
        """The harness engine, opened on first use."""
        if self._engine is None:
            self._engine = harness_engine(self.url)
        return self._engine

    def close(self) -> None:
        """Dispose of the engine."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


SNAPSHOT_TABLES = (
    *(str(t.name) for t in ENTITY_TABLES),
    "processed_events",
    "event_anomalies",
    "quarantined_events",
)
ENTITY_NAMES = {str(t.name) for t in ENTITY_TABLES}


def snapshot(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Every table the events determine, without ids, source names and wall-clock columns."""
    with reading(engine) as connection:
        if not sa.inspect(connection).has_table("projection_checkpoints"):
            return {name: [] for name in SNAPSHOT_TABLES}
        result: dict[str, list[dict[str, Any]]] = {}
        for table in ENTITY_TABLES:
            query = sa.select(table).order_by(*table.primary_key.columns)
            result[str(table.name)] = [dict(r) for r in connection.execute(query).mappings()]
        ledger = TABLES["processed_events"]
        query = sa.select(ledger).order_by(ledger.c.event_id)
        result["processed_events"] = [dict(r) for r in connection.execute(query).mappings()]
        anomalies = [
            {k: v for k, v in r.items() if k not in ("id", "source")}
            for r in connection.execute(sa.select(TABLES["event_anomalies"])).mappings()
        ]
        result["event_anomalies"] = sorted(
            anomalies, key=lambda r: (r["position"], r["kind"], r["event_id"], str(r["detail"]))
        )
        quarantined = [
            {k: v for k, v in r.items() if k not in ("id", "quarantined_at", "source")}
            for r in connection.execute(sa.select(TABLES["quarantined_events"])).mappings()
        ]
        result["quarantined_events"] = sorted(quarantined, key=lambda r: r["position"])
    return result


def _key_of(table: str, row: dict[str, Any]) -> Any:
    if table in ENTITY_NAMES:
        return tuple(row[c.name] for c in TABLES[table].primary_key.columns)
    return row["event_id"] if table == "processed_events" else row.get("position")


def difference(actual: dict[str, list[dict[str, Any]]], expected: dict[str, Any]) -> str | None:
    """None when identical, else where the first difference lies."""
    for table, rows in expected.items():
        found = actual.get(table, [])
        if found == rows:
            continue
        if len(found) != len(rows):
            keys = {repr(_key_of(table, r)) for r in rows}
            have = {repr(_key_of(table, r)) for r in found}
            missing, extra = sorted(keys - have)[:3], sorted(have - keys)[:3]
            return (
                f"{table}: {len(found)} rows, the clean rebuild has {len(rows)} "
                f"(missing {missing}, extra {extra})"
            )
        for mine, theirs in zip(found, rows, strict=True):
            if mine != theirs:
                columns = [k for k in theirs if mine.get(k) != theirs.get(k)]
                first = columns[0] if columns else "?"
                return (
                    f"{table} row {_key_of(table, theirs)!r} differs in {columns}: "
                    f"{str(mine.get(first))[:80]!r} != clean {str(theirs.get(first))[:80]!r}"
                )
    return None


def checkpoints(engine: sa.Engine) -> dict[str, int]:
    """Each projector's checkpoint position; empty before the schema exists."""
    with reading(engine) as connection:
        if not sa.inspect(connection).has_table("projection_checkpoints"):
            return {}
        rows = connection.execute(sa.select(TABLES["projection_checkpoints"])).mappings()
        return {r["projector"]: int(r["position"]) for r in rows}


def position(db: Db) -> int:
    """Where the read model stands (the highest checkpoint, 0 before any)."""
    return max(checkpoints(db.engine).values(), default=0)


def count_rows(engine: sa.Engine, table: str) -> int:
    """Rows in a table."""
    with reading(engine) as connection:
        query = sa.select(sa.func.count()).select_from(TABLES[table])
        return int(connection.execute(query).scalar_one())


def log_backlog(engine: sa.Engine) -> int:
    """The most rows of event_log any projector still has to read."""
    with reading(engine) as connection:
        found = read_checkpoints(connection, "db:event_log")
    source = EventLogSource(engine)
    return max(source.pending(c.position, c.source_state) for c in found.values())


@dataclass
class Replay:
    """A clean rebuild: its tables and its counters."""

    tables: dict[str, list[dict[str, Any]]]
    counters: dict[str, int]


class Reference:
    """A database of the trial's kind for clean in-process rebuilds, reused from trial to trial."""

    def __init__(self, db: Db, scratch: Path) -> None:
        self.db = db
        self.scratch = scratch
        upgrade(db.engine)

    def _settings(self) -> Settings:
        return Settings(database_url=normalise_url(self.db.url), batch_size=5000)

    def of_file(self, path: Path) -> Replay:
        """Rebuild from an NDJSON file."""
        source = NdjsonSource(path)
        try:
            result = clean_rebuild(self.db.engine, source, self._settings())
        finally:
            source.close()
        return Replay(snapshot(self.db.engine), result.summary())

    def of_bytes(self, data: bytes) -> Replay:
        """Rebuild from NDJSON bytes."""
        path = self.scratch / f"reference-{uuid.uuid4().hex[:8]}.ndjson"
        path.write_bytes(data)
        try:
            return self.of_file(path)
        finally:
            path.unlink()

    def of_log(self, log: Db) -> Replay:
        """Rebuild from another database's event_log."""
        result = clean_rebuild(self.db.engine, EventLogSource(log.engine), self._settings())
        return Replay(snapshot(self.db.engine), result.summary())


# --------------------------------------------------------------------------- the product


def argv(*parts: str | Path | int) -> list[str]:
    """Command words: strings split on spaces (URLs and scratch paths have none)."""
    words: list[str] = []
    for part in parts:
        words.extend(part.split() if isinstance(part, str) else [str(part)])
    return words


@dataclass
class Done:
    """A finished command."""

    rc: int
    out: str
    err: str
    seconds: float

    def json(self) -> dict[str, Any]:
        """The --json object it printed ({} when none)."""
        with contextlib.suppress(ValueError):
            value = json.loads(self.out)
            if isinstance(value, dict):
                return value
        return {}

    def first_error(self) -> str:
        """The start of stderr, on one line."""
        return " ".join(self.err.split())[:240] or "(no message)"


class Proc:
    """A product process in the background, its output in files."""

    def __init__(self, harness: Harness, words: list[str], label: str) -> None:
        stem = harness.workdir / f"{label}-{uuid.uuid4().hex[:6]}"
        self.out_path, self.err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
        self.verb = words[0]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "projections", *words],
                stdout=out,
                stderr=err,
                env=harness.env,
                cwd=harness.workdir,
            )
        harness.procs.append(self)

    def alive(self) -> bool:
        """True while running."""
        return self.popen.poll() is None

    def finished_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when it exited meanwhile."""
        try:
            self.popen.wait(timeout=max(0.0, seconds))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGKILL (this process only), and reap."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL when it does not stop (exit code -9)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        return int(self.popen.returncode)

    def done(self) -> Done:
        """The finished process as a Done."""
        rc = self.popen.returncode
        return Done(-1 if rc is None else rc, self.stdout(), self.stderr(), 0.0)

    def stdout(self) -> str:
        """Everything it printed so far."""
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.err_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """Its JSON lines (schedule --log-json, follow --json)."""
        found = []
        for line in self.stdout().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    found.append(value)
        return found

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Wait until one of its JSON lines matches; False on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(wanted(r) for r in self.records()):
                return True
            if not self.alive():
                return any(wanted(r) for r in self.records())
            time.sleep(0.1)
        return False

    def tail(self) -> str:
        """The end of its stderr, on one line."""
        return " ".join(self.stderr().split())[-300:]


class LogFile:
    """A generated NDJSON log written out progressively; line numbers as the product counts."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.lines = data.split(b"\n")[:-1]
        self.written = 0
        self.numbers = [i for i, line in enumerate(self.lines, 1) if _counted(line)]
        path.write_bytes(b"")

    @property
    def total(self) -> int:
        """Non-blank lines in the whole log."""
        return len(self.numbers)

    @property
    def last(self) -> int:
        """The position of the last line."""
        return len(self.lines)

    def write_upto(self, end: int) -> None:
        """Append lines up to line number `end`."""
        end = min(end, len(self.lines))
        if end > self.written:
            with self.path.open("ab") as handle:
                handle.write(b"".join(line + b"\n" for line in self.lines[self.written : end]))
            self.written = end

    def count(self, after: int = 0, upto: int | None = None) -> int:
        """Non-blank lines with a number in (after, upto]."""
        upto = len(self.lines) if upto is None else upto
        return bisect.bisect_right(self.numbers, upto) - bisect.bisect_right(self.numbers, after)

    def prefix(self, end: int) -> bytes:
        """The log's first `end` lines."""
        return b"".join(line + b"\n" for line in self.lines[:end])


def _counted(line: bytes) -> bool:
    """True for a line the product reads (not blank; a trailing CR ignored)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    return bool(line.strip())


def generated(events: int, seed: int) -> bytes:
    """A generated log with the default (realistic) noise."""
    lines = generate(events, seed=seed, aggregates=max(1, events // 5), noise=Noise.default())
    return b"".join(lines)


def storable_rows(data: bytes) -> list[dict[str, Any]]:
    """event_log rows for the lines `import` would store, each event_id once."""
    rows, seen = [], set()
    for line in data.split(b"\n"):
        if not _counted(line):
            continue
        try:
            row = entry(line.rstrip(b"\r"))
        except Unstorable:
            continue
        if row["event_id"] not in seen:
            seen.add(row["event_id"])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- harness


@dataclass
class Calibration:
    """How long a command takes on one kind of database: start-up, and work per event."""

    startup: float
    per_event: float

    def delay(self, rng: random.Random, events: int, batch: int) -> float:
        """A random instant in the life of a command that has `events` to process."""
        if rng.random() < 0.2:
            return rng.uniform(0.05, self.startup)  # start-up: imports, migration, first read
        work = self.per_event * events * (1.0 + 60.0 / batch)
        return self.startup + rng.uniform(0.0, 1.1) * max(0.2, work)


class Harness:
    """Databases, product processes and clean rebuilds for the campaigns."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = SHORT if args.short else FULL
        self.short = bool(args.short)
        self.seed = int(args.seed)
        self.admin_url = args.pg_admin_url
        base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="torture-", dir=base)).resolve()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTIONS_")}
        self.env.update(COLUMNS="200", PYTHONUNBUFFERED="1")
        paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.procs: list[Proc] = []
        self.databases: list[Db] = []
        self.references: dict[str, Reference] = {}
        self.calibrations: dict[str, Calibration] = {}

    # --- databases -----------------------------------------------------------------------

    def admin(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the PostgreSQL admin database."""
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def postgres_problem(self) -> str | None:
        """None when the PostgreSQL server answers, else why not."""
        try:
            with self.admin():
                return None
        except psycopg.Error as exc:
            return str(exc).strip().splitlines()[0]

    def new_db(self, kind: str, label: str, *, path: Path | None = None) -> Db:
        """A fresh, empty database (no schema) for one trial."""
        tag = f"{label}_{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            file = path or self.workdir / f"{tag}.db"
            db = Db("sqlite", f"sqlite:///{file}", tag, path=file)
            self.databases.append(db)
            return db
        name = f"torture_{tag}".lower()
        url = sa.make_url(self.admin_url).set(database=name)
        db = Db("postgres", url.render_as_string(hide_password=False), name)
        self.databases.append(db)  # before it exists: an interrupt here still drops it
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return db

    def drop(self, db: Db) -> None:
        """Remove a trial's database."""
        db.close()
        if db in self.databases:
            self.databases.remove(db)
        if db.kind == "postgres":
            with contextlib.suppress(psycopg.Error), self.admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        elif db.path is not None:
            for suffix in ("", "-wal", "-shm", "-journal", ".projections_shadow"):
                with contextlib.suppress(OSError):
                    Path(f"{db.path}{suffix}").unlink()

    def reference(self, kind: str) -> Reference:
        """The kind's reference database for clean rebuilds."""
        if kind not in self.references:
            self.references[kind] = Reference(self.new_db(kind, "reference"), self.workdir)
        return self.references[kind]

    def shadow_left(self, db: Db) -> bool:
        """True when a rebuild's shadow is still there."""
        if db.kind == "sqlite":
            return Path(f"{db.path}.projections_shadow").exists()
        query = "SELECT count(*) FROM pg_namespace WHERE nspname = 'projections_shadow'"
        with reading(db.engine) as connection:
            return bool(connection.execute(sa.text(query)).scalar_one())

    # --- the product ---------------------------------------------------------------------

    def cli(self, *args: str | Path | int, timeout: float = 300.0) -> Done:
        """Run the product to completion (strings split on spaces, see `argv`)."""
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "projections", *argv(*args)],
                capture_output=True,
                text=True,
                errors="replace",
                env=self.env,
                cwd=self.workdir,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Done(-9, "", f"timed out after {timeout} s", timeout)
        return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def spawn(self, *args: str | Path | int, label: str) -> Proc:
        """Start the product in the background (arguments as for `cli`)."""
        return Proc(self, argv(*args), label)

    def calibrate(self, kind: str, log: LogFile) -> Calibration:
        """Time a whole run and an idle run once per kind (to aim the kills)."""
        if kind not in self.calibrations:
            scratch = self.new_db(kind, "calibrate")
            full = self.workdir / "calibrate.ndjson"
            full.write_bytes(log.prefix(log.last))
            try:
                work = self.cli(f"run --source {full} {scratch.flag} --batch-size 200")
                idle = self.cli(f"run --source {full} {scratch.flag}")
                startup = idle.seconds if idle.rc == 0 else 1.5
                per_event = max(0.0, work.seconds - startup) / max(1, log.total)
                self.calibrations[kind] = Calibration(startup, per_event)
            finally:
                full.unlink()
                self.drop(scratch)
        return self.calibrations[kind]

    # --- checks --------------------------------------------------------------------------

    def ok(self, trial: Trial, done: Done, what: str) -> bool:
        """The command succeeded, without a traceback."""
        if TRACEBACK in done.err:
            trial.fail(f"{what} crashed with a traceback: ...{done.err.strip()[-240:]!r}")
            return False
        return trial.check(done.rc == 0, f"{what} exited {done.rc}: {done.first_error()}")

    def clean_failure(self, trial: Trial, done: Done, what: str) -> bool:
        """A command under a fault: exit 0, or 1 with a message, never a traceback."""
        if TRACEBACK in done.err:
            trial.fail(f"{what} crashed with a traceback: ...{done.err.strip()[-240:]!r}")
            return False
        if done.rc == 1 and not done.err.strip():
            trial.fail(f"{what} exited 1 without saying why")
        return trial.check(done.rc in (0, 1), f"{what} exited {done.rc}: {done.first_error()}")

    def alive_and_clean(self, trial: Trial, proc: Proc, what: str) -> None:
        """A daemon that must still run, stop on SIGTERM with 0, never print a traceback."""
        alive = proc.alive()
        trial.check(alive, f"{what} died (exit {proc.popen.returncode}): {proc.tail()}")
        code = proc.stop()
        if alive:
            trial.check(code == 0, f"{what} exited {code} on SIGTERM: {proc.tail()}")
        trial.check(TRACEBACK not in proc.stderr(), f"{what} printed a traceback: {proc.tail()}")

    def account(self, trial: Trial, counters: dict[str, Any], lines: int, what: str) -> None:
        """read equals the lines in the source, and the outcomes add up to read."""
        read = int(counters.get("read", -1))
        parts = sum(int(counters.get(k, 0)) for k in OUTCOMES)
        trial.check(read == lines, f"{what}: read {read}, the source has {lines} lines")
        trial.check(parts == read, f"{what}: the outcomes add up to {parts}, read {read}")

    def compare(self, trial: Trial, db: Db, replay: Replay, lines: int, what: str) -> None:
        """The trial's tables equal the clean rebuild, which accounts for every line."""
        self.account(trial, replay.counters, lines, f"{what}: clean rebuild")
        counted = sum(replay.counters[k] for k in ("applied", "noop", "rejected"))
        ledger, quarantine = replay.tables["processed_events"], replay.tables["quarantined_events"]
        trial.check(
            len(ledger) == counted,
            f"{what}: ledger holds {len(ledger)} events, applied + noop + rejected = {counted}",
        )
        trial.check(
            len(quarantine) == replay.counters["quarantined"],
            f"{what}: {len(quarantine)} rows quarantined, {replay.counters['quarantined']} counted",
        )
        found = difference(snapshot(db.engine), replay.tables)
        trial.check(found is None, f"{what}: the tables differ from a clean rebuild: {found}")

    def consistent_prefix(
        self, trial: Trial, db: Db, log: LogFile, reference: Reference, what: str
    ) -> int:
        """After a fault: one checkpoint for all, and tables equal a rebuild up to it."""
        found = checkpoints(db.engine)
        positions = set(found.values())
        if not trial.check(len(positions) <= 1, f"{what}: torn checkpoints {found}"):
            return min(positions)
        at = positions.pop() if positions else 0
        if not trial.check(at <= log.written, f"{what}: checkpoint {at} beyond the log"):
            return at
        replay = reference.of_bytes(log.prefix(at))
        differs = difference(snapshot(db.engine), replay.tables)
        trial.check(differs is None, f"{what}: tables at line {at} != a clean rebuild: {differs}")
        return at

    # --- machinery ------------------------------------------------------------------------

    @contextlib.contextmanager
    def tmpfs(self, size_kb: int) -> Iterator[Path]:
        """A tiny tmpfs mounted for a full-disk fault; Skip when this machine refuses."""
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise Skip("mounting a tmpfs needs root and mount(8)")
        where = Path(tempfile.mkdtemp(prefix="torture-fs-", dir="/tmp"))
        os.chmod(where, 0o755)
        options = f"size={size_kb}k,mode=0755"
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            where.rmdir()
            raise Skip(f"cannot mount a tmpfs: {mounted.stderr.strip()[:80]}")
        try:
            yield where
        finally:
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
            with contextlib.suppress(OSError):
                where.rmdir()

    def cleanup(self) -> None:
        """Stop every process we started, drop every database, remove the scratch folder."""
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
        for reference in self.references.values():
            reference.db.close()
        for db in list(self.databases):
            with contextlib.suppress(Exception):
                self.drop(db)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- campaign: kill


@dataclass
class KillCase:
    """What the kill helpers share."""

    h: Harness
    t: Trial
    rng: random.Random
    db: Db
    log: LogFile
    reference: Reference
    calibration: Calibration
    kills: int


def kill_trial(h: Harness, kind: str, number: int, rng: random.Random, t: Trial) -> None:
    """SIGKILL one verb at random instants, check the state after each kill, then recover."""
    verb = ("run", "rebuild", "schedule")[number % 3]
    t.label = verb
    data = generated(h.plan.events["kill"], rng.randrange(1 << 30))
    log = LogFile(h.workdir / f"kill-{kind}-{number}.ndjson", data)
    reference = h.reference(kind)
    calibration = h.calibrate(kind, log)
    kills = rng.randint(1, 2) if h.short else rng.randint(1, 4)
    db = h.new_db(kind, "kill")
    t.events = log.total
    case = KillCase(h, t, rng, db, log, reference, calibration, kills)
    try:
        action = {"run": _kill_runs, "rebuild": _kill_rebuilds, "schedule": _kill_schedules}
        landed, seconds, text = action[verb](case)
        if not t.problems:
            h.compare(t, db, reference.of_file(log.path), log.total, "after recovery")
        t.consider(landed * 100 + seconds, text)  # the most kills survived, then the slowest
    finally:
        h.drop(db)


def _kill_runs(c: KillCase) -> tuple[int, float, str]:
    h, t, log, db = c.h, c.t, c.log, c.db
    cuts = [*sorted(c.rng.sample(range(1, log.last), c.kills)), log.last]
    landed: list[str] = []
    for k in range(c.kills):
        log.write_upto(cuts[k])
        before = position(db)
        batch = c.rng.choice([25, 50, 100, 200, 500])
        proc = h.spawn(
            f"run --source {log.path} {db.flag} --batch-size {batch} --json", label="kill-run"
        )
        delay = c.calibration.delay(c.rng, log.count(before, log.written), batch)
        if proc.finished_within(delay):
            if h.ok(t, proc.done(), "run (not killed)"):
                pending = log.count(before, log.written)
                h.account(t, proc.done().json(), pending, "run (not killed)")
            continue
        proc.kill()
        what = f"run killed after {delay:.2f}s (batch {batch})"
        at = h.consistent_prefix(t, db, log, c.reference, what)
        landed.append(f"{delay:.2f}s at line {at}/{log.written}")
    log.write_upto(log.last)
    before = position(db)
    final = h.cli(f"run --source {log.path} {db.flag} --json")
    if h.ok(t, final, "recovery run"):
        h.account(t, final.json(), log.count(before), "recovery run")
    kills = ", ".join(landed) or "none landed"
    text = f"run killed {len(landed)}x ({kills}); run recovered in {final.seconds:.1f}s"
    return len(landed), final.seconds, text


def _kill_rebuilds(c: KillCase) -> tuple[int, float, str]:
    h, t, log, db = c.h, c.t, c.log, c.db
    log.write_upto(c.rng.randint(log.last // 4, 3 * log.last // 4))
    upgrade(db.engine)  # a live read model over part of the log, then the rest arrives
    source = NdjsonSource(log.path)
    try:
        catch_up(db.engine, source, Settings(database_url=normalise_url(db.url), batch_size=500))
    finally:
        source.close()
    log.write_upto(log.last)
    live = snapshot(db.engine)
    full: Replay | None = None
    landed = 0
    for k in range(c.kills):
        batch = c.rng.choice([50, 100, 200, 500])
        resume = "--resume" if k and c.rng.random() < 0.5 else ""
        proc = h.spawn(
            f"rebuild --source {log.path} {db.flag} --batch-size {batch} --json {resume}",
            label="kill-rebuild",
        )
        delay = c.calibration.delay(c.rng, log.total, batch)
        if proc.finished_within(delay):
            if h.ok(t, proc.done(), f"rebuild {resume} (not killed)"):
                if not resume:
                    h.account(t, proc.done().json(), log.total, "rebuild (not killed)")
                live = snapshot(db.engine)
            continue
        proc.kill()
        landed += 1
        now = snapshot(db.engine)
        if now != live:  # allowed only when the swap committed just before the kill
            full = full or c.reference.of_file(log.path)
            differs = difference(now, full.tables)
            t.check(
                differs is None,
                f"a rebuild killed after {delay:.2f}s changed the live read model "
                f"(neither the old tables nor the new ones): {differs}",
            )
            live = now
    choice = c.rng.choice(["run", "rebuild", "rebuild --resume"])
    before = position(db)
    final = h.cli(f"{choice} --source {log.path} {db.flag} --json")
    if h.ok(t, final, f"recovery {choice}"):
        summary = final.json()
        if choice == "run":
            h.account(t, summary, log.count(before), "recovery run")
        else:
            if choice == "rebuild":
                h.account(t, summary, log.total, "recovery rebuild")
            t.check(summary.get("swapped") is True, f"{choice} did not swap: {summary}")
            t.check(not h.shadow_left(db), f"a finished {choice} left its shadow behind")
    text = f"rebuild killed {landed}x; {choice} recovered in {final.seconds:.1f}s"
    return landed, final.seconds, text


def _kill_schedules(c: KillCase) -> tuple[int, float, str]:
    h, t, log, db = c.h, c.t, c.log, c.db
    log.write_upto(log.last // 5)
    step = max(1, log.last // (5 * c.kills))
    for _ in range(c.kills):
        batch = c.rng.choice([50, 100, 200, 500])
        proc = h.spawn(
            f"schedule --source {log.path} {db.flag} --every 0.2s --batch-size {batch} --log-json",
            label="kill-schedule",
        )
        deadline = time.monotonic() + c.calibration.delay(c.rng, step * 2, batch) + 0.3
        while time.monotonic() < deadline and proc.alive():
            log.write_upto(log.written + c.rng.randint(1, step))
            time.sleep(c.rng.uniform(0.05, 0.3))
        if not t.check(proc.alive(), f"schedule exited {proc.popen.returncode}: {proc.tail()}"):
            return 0, 0.0, "schedule died"
        proc.kill()
        h.consistent_prefix(t, db, log, c.reference, "schedule killed")
    log.write_upto(log.last)
    before = position(db)
    started = time.monotonic()
    proc = h.spawn(
        f"schedule --source {log.path} {db.flag} --every 0.2s --log-json", label="recover"
    )
    caught = proc.wait_for(lambda r: r.get("position") == log.last, timeout=120)
    took = time.monotonic() - started
    t.check(caught, f"the restarted schedule never reached line {log.last}")
    h.alive_and_clean(t, proc, "the restarted schedule")
    records = proc.records()
    failed = [r for r in records if r.get("result") == "failed"]
    t.check(not failed, f"schedule ticks failed: {failed[:2]}")
    ticks = [r for r in records if r.get("result") in ("ok", "interrupted")]
    summed = {k: sum(int(r.get(k, 0)) for r in ticks) for k in COUNTERS}
    h.account(t, summed, log.count(before), "restarted schedule (its ticks summed)")
    return c.kills, took, f"schedule killed {c.kills}x; a restart caught up in {took:.1f}s"


# --------------------------------------------------------------------------- campaign: db-faults


def faults_for(h: Harness, kind: str) -> tuple[str, ...]:
    """The faults a kind is tried with (--fault narrows them; disruptive ones not in --short)."""
    faults = FAULTS[kind]
    if h.args.faults:
        faults = tuple(f for f in faults if f in h.args.faults)
    elif h.short:
        faults = tuple(f for f in faults if f not in DISRUPTIVE)
    return faults


@dataclass
class FaultCase:
    """What the fault helpers share."""

    h: Harness
    t: Trial
    rng: random.Random
    kind: str
    log: LogFile
    reference: Reference


def db_fault_trial(h: Harness, kind: str, number: int, rng: random.Random, t: Trial) -> None:
    """Inject one fault while the product works; it must fail cleanly, then recover."""
    faults = faults_for(h, kind)
    rounds = [*faults] + [f for f in faults if f not in DISRUPTIVE] * (
        h.plan.trials["db-faults"] - 1
    )
    fault = rounds[number % len(rounds)]
    t.label = fault
    data = generated(h.plan.events["db-faults"], rng.randrange(1 << 30))
    log = LogFile(h.workdir / f"fault-{kind}-{number}.ndjson", data)
    t.events = log.total
    action = {
        "terminate": _fault_terminate,
        "statement_timeout": _fault_statement_timeout,
        "full_disk": _fault_full_disk,
        "temp_file_limit": _fault_temp_file_limit,
        "restart": _fault_restart,
        "locked": _fault_locked,
    }[fault]
    action(FaultCase(h, t, rng, kind, log, h.reference(kind)))


def _insert_rows(db: Db, rows: list[dict[str, Any]]) -> None:
    with db.engine.begin() as connection:
        for start in range(0, len(rows), 500):
            connection.execute(sa.insert(LOG), rows[start : start + 500])


def _fault_terminate(c: FaultCase) -> None:
    """pg_terminate_backend, again and again, under run, schedule and follow on event_log."""
    h, t = c.h, c.t
    db = h.new_db(c.kind, "terminate")
    rows = storable_rows(c.log.prefix(c.log.last))
    chunks = [rows[i * len(rows) // 5 : (i + 1) * len(rows) // 5] for i in range(5)]
    t.events = len(rows)
    daemons: list[Proc] = []
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        _insert_rows(db, chunks[0])
        daemons = [
            h.spawn(
                f"schedule --source db {db.flag} --every 0.2s --batch-size 100 --log-json",
                label="terminate-schedule",
            ),
            h.spawn(f"follow --source db {db.flag} --batch-size 100 --json", label="terminate"),
        ]
        ticked = daemons[0].wait_for(lambda r: r.get("result") == "ok", 60)
        listening = _wait_listening(h, db, 60)
        states = [(d.verb, d.popen.poll(), d.tail()) for d in daemons]
        t.check(ticked and listening, f"schedule and follow did not start: {states}")
        stop, terminated = threading.Event(), [0]

        def terminator() -> None:
            with h.admin() as admin:
                while not stop.wait(c.rng.uniform(0.05, 0.3)):
                    row = admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name = 'projections' "
                        "AND pid <> pg_backend_pid()",
                        (db.name,),
                    ).fetchone()
                    terminated[0] += int(row[0]) if row else 0

        thread = threading.Thread(target=terminator, daemon=True)
        thread.start()
        failed_runs = 0
        try:
            for chunk in chunks[1:]:
                _insert_rows(db, chunk)
                done = h.cli(f"run --source db {db.flag} --batch-size 100")
                h.clean_failure(t, done, "run under pg_terminate_backend")
                failed_runs += done.rc != 0
        finally:
            stop.set()
            thread.join()
        ended = time.monotonic()
        while time.monotonic() - ended < 120 and any(d.alive() for d in daemons):
            if log_backlog(db.engine) == 0:
                break
            time.sleep(0.2)
        recovered = time.monotonic() - ended
        failed_ticks = sum(r.get("result") == "failed" for r in daemons[0].records())
        schedule, follow = daemons
        h.alive_and_clean(t, schedule, "schedule under pg_terminate_backend")
        follow_text = "follow survived"
        if not follow.alive() and TRACEBACK not in follow.stderr():
            # Not promised: follow has no retry; it must at least fail cleanly.
            t.check(follow.popen.returncode == 1, f"follow exited {follow.popen.returncode}")
            follow_text = "follow exited 1 (no retry)"
        else:
            h.alive_and_clean(t, follow, "follow under pg_terminate_backend")
        final = h.cli(f"run --source db {db.flag} --json")
        h.ok(t, final, "run after the terminations")
        h.compare(t, db, c.reference.of_log(db), len(rows), "after the terminations")
        t.consider(
            recovered,
            f"{terminated[0]} backends terminated: {failed_runs}/4 runs and {failed_ticks} "
            f"ticks failed cleanly, {follow_text}; caught up {recovered:.1f}s after the last",
        )
    finally:
        for daemon in daemons:
            daemon.kill()
        h.drop(db)


def _wait_listening(h: Harness, db: Db, timeout: float) -> bool:
    """Wait until a backend of the database LISTENs (follow is up)."""
    deadline = time.monotonic() + timeout
    with h.admin() as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND query LIKE 'LISTEN%%'",
                (db.name,),
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.1)
    return False


def _fault_statement_timeout(c: FaultCase) -> None:
    """A statement timeout so short that batches are cancelled; then reset, and recover."""
    h, t, log = c.h, c.t, c.log
    db = h.new_db(c.kind, "timeout")
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        log.write_upto(log.last)
        limit = c.rng.choice([5, 10, 20, 50])
        with h.admin() as admin:
            admin.execute(f"ALTER DATABASE \"{db.name}\" SET statement_timeout = '{limit}ms'")
        cancelled = 0
        try:
            for attempt in range(3):
                batch = c.rng.choice([500, 2000, 5000])
                done = h.cli(f"run --source {log.path} {db.flag} --batch-size {batch}")
                h.clean_failure(t, done, f"run under statement_timeout {limit}ms")
                cancelled += done.rc != 0
                h.consistent_prefix(t, db, log, c.reference, f"timeout attempt {attempt}")
                if done.rc == 0:
                    break
        finally:
            with h.admin() as admin:
                admin.execute(f'ALTER DATABASE "{db.name}" RESET statement_timeout')
        before = position(db)
        final = h.cli(f"run --source {log.path} {db.flag} --json")
        if h.ok(t, final, "run after the timeouts"):
            h.account(t, final.json(), log.count(before), "run after the timeouts")
        h.compare(t, db, c.reference.of_file(log.path), log.total, "after statement timeouts")
        t.consider(
            float(cancelled),
            f"statement_timeout {limit}ms: {cancelled} runs cancelled, resumed at line {before}",
        )
    finally:
        h.drop(db)


def _fault_temp_file_limit(c: FaultCase) -> None:
    """temp_file_limit 0 and a tiny work_mem: any statement that spills must fail cleanly."""
    h, t, log = c.h, c.t, c.log
    db = h.new_db(c.kind, "tempfile")
    try:
        log.write_upto(2 * log.last // 3)
        h.ok(t, h.cli(f"run --source {log.path} {db.flag}"), "run before the limit")
        with h.admin() as admin:
            admin.execute(f"ALTER DATABASE \"{db.name}\" SET work_mem = '64kB'")
            admin.execute(f"ALTER DATABASE \"{db.name}\" SET temp_file_limit = '0'")
        hits = []
        try:
            # verify first: its replay fits, then its key-ordered comparison sorts and spills.
            for verb in ("verify", "run", "rebuild"):
                log.write_upto(log.last if verb == "run" else log.written)
                done = h.cli(f"{verb} --source {log.path} {db.flag} --batch-size 2000", timeout=45)
                if done.rc == -9:
                    t.fail(f"{verb} under temp_file_limit 0 hung (killed after 45 s)")
                    continue
                h.clean_failure(t, done, f"{verb} under temp_file_limit 0")
                if "temp_file_limit" in done.err or "temporary file size" in done.err:
                    hits.append(verb)
        finally:
            with h.admin() as admin:
                admin.execute(f'ALTER DATABASE "{db.name}" RESET work_mem')
                admin.execute(f'ALTER DATABASE "{db.name}" RESET temp_file_limit')
        before = position(db)
        final = h.cli(f"run --source {log.path} {db.flag} --json")
        if h.ok(t, final, "run after temp_file_limit"):
            h.account(t, final.json(), log.count(before), "run after temp_file_limit")
        h.compare(t, db, c.reference.of_file(log.path), log.total, "after temp_file_limit")
        t.consider(
            float(len(hits)),
            "temp_file_limit 0, work_mem 64kB: "
            + (f"{', '.join(hits)} failed on it" if hits else "nothing spilled to a temp file"),
        )
    finally:
        h.drop(db)


def _used_kb(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


def _remount(path: Path, size_kb: int) -> bool:
    done = subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(path)])
    return done.returncode == 0


def _fault_full_disk(c: FaultCase) -> None:
    """The database's files on a tmpfs that fills up mid-run; then it grows, and we recover."""
    with c.h.tmpfs(4096) as mount:
        if c.kind == "sqlite":
            db = c.h.new_db("sqlite", "fulldisk", path=mount / "full.db")
            try:
                c.h.ok(c.t, c.h.cli(f"migrate {db.flag}"), "migrate on the tmpfs")
                _fill_and_free(c, db, mount, ("database or disk is full",))
            finally:
                c.h.drop(db)
            return
        _full_disk_postgres(c, mount)


def _full_disk_postgres(c: FaultCase, mount: Path) -> None:
    h = c.h
    with h.admin() as admin:
        row = admin.execute("SHOW data_directory").fetchone()
    data_directory = Path(str(row[0])) if row else Path("/nonexistent")
    if not data_directory.is_dir():
        raise Skip("the PostgreSQL server is not on this machine (a tablespace needs its disk)")
    owner = pwd.getpwuid(data_directory.stat().st_uid)
    location = mount / "tablespace"
    location.mkdir()
    os.chown(location, owner.pw_uid, owner.pw_gid)
    space = f"torture_ts_{uuid.uuid4().hex[:10]}"
    with h.admin() as admin:
        admin.execute(f"CREATE TABLESPACE {space} LOCATION '{location}'")
    db = h.new_db("postgres", "fulldisk")
    try:
        with h.admin() as admin:
            admin.execute(f'ALTER DATABASE "{db.name}" SET default_tablespace = {space}')
        h.ok(c.t, h.cli(f"migrate {db.flag}"), "migrate on the tablespace")
        _fill_and_free(c, db, mount, ("No space left on device", "could not extend file"))
    finally:
        h.drop(db)
        with h.admin() as admin:
            admin.execute(f"DROP TABLESPACE IF EXISTS {space}")


def _fill_and_free(c: FaultCase, db: Db, mount: Path, phrases: tuple[str, ...]) -> None:
    """Shrink the disk so it fills midway; run; rebuild; give space back; recover."""
    h, t, log = c.h, c.t, c.log
    used = _used_kb(mount)
    overhead, per_event_kb = (600, 0.45) if db.kind == "postgres" else (64, 0.35)
    room = overhead + int(log.total * per_event_kb * c.rng.uniform(0.2, 0.6))
    if not _remount(mount, used + room):
        raise Skip("cannot resize the tmpfs")
    log.write_upto(log.last)
    done = h.cli(f"run --source {log.path} {db.flag} --batch-size 200")
    h.clean_failure(t, done, "run on a full disk")
    filled = done.rc == 1
    if filled:
        said = any(phrase in done.err for phrase in phrases)
        t.check(said, f"a full disk should say so: {done.first_error()}")
    at = h.consistent_prefix(t, db, log, c.reference, "run on a full disk")
    live = snapshot(db.engine)
    rebuilt = h.cli(f"rebuild --source {log.path} {db.flag}")
    h.clean_failure(t, rebuilt, "rebuild on a full disk")
    if rebuilt.rc == 1:
        t.check(snapshot(db.engine) == live, "a rebuild that failed changed the live read model")
        t.check(not h.shadow_left(db), "a rebuild that failed left its shadow behind")
    if not _remount(mount, 512 * 1024):
        raise Skip("cannot grow the tmpfs again")
    before = position(db)
    final = h.cli(f"run --source {log.path} {db.flag} --json")
    if h.ok(t, final, "run once the disk has room"):
        h.account(t, final.json(), log.count(before), "run once the disk has room")
    h.compare(t, db, c.reference.of_file(log.path), log.total, "after the full disk")
    state = f"full at line {at}/{log.last}" if filled else "never filled"
    t.consider(
        float(filled),
        f"{used + room} kB disk: run {state}, rebuild exit {rebuilt.rc}; "
        f"recovered in {final.seconds:.1f}s",
    )


def _fault_locked(c: FaultCase) -> None:
    """Another connection holds SQLite's write lock for a while; run must wait, then finish."""
    h, t, log = c.h, c.t, c.log
    db = h.new_db(c.kind, "locked")
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        log.write_upto(log.last)
        hold = c.rng.uniform(0.5, 3.0)
        holder = sqlite3.connect(str(db.path), isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        proc = h.spawn(f"run --source {log.path} {db.flag} --json", label="locked-run")
        time.sleep(hold)
        waited = proc.alive()
        holder.execute("ROLLBACK")
        holder.close()
        if not proc.finished_within(120):
            proc.kill()
            t.fail("run never finished after the lock was released")
        elif h.ok(t, proc.done(), "run behind a held write lock"):
            h.account(t, proc.done().json(), log.total, "run behind a held write lock")
        t.check(waited, "run gave up while another connection held the write lock")
        h.compare(t, db, c.reference.of_file(log.path), log.total, "after the lock")
        t.consider(hold, f"write lock held {hold:.1f}s elsewhere: run waited, then finished")
    finally:
        h.drop(db)


def _fault_restart(c: FaultCase) -> None:
    """Restart the PostgreSQL server under a scheduler and a writer (full campaign only)."""
    h, t = c.h, c.t
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        raise Skip("needs root and pg_ctlcluster")
    with h.admin() as admin:
        row = admin.execute("SHOW data_directory").fetchone()
    data_directory = Path(str(row[0])) if row else Path("/nonexistent")
    if not data_directory.is_dir():
        raise Skip("the PostgreSQL server is not on this machine")
    version, cluster = data_directory.parts[-2:]
    db = h.new_db(c.kind, "restart")
    schedule: Proc | None = None
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        rows = storable_rows(c.log.prefix(c.log.last))
        half = len(rows) // 2
        _insert_rows(db, rows[:half])
        schedule = h.spawn(
            f"schedule --source db {db.flag} --every 0.3s --batch-size 200 --log-json",
            label="restart-schedule",
        )
        ticked = schedule.wait_for(lambda r: r.get("result") == "ok", 60)
        t.check(ticked, f"the scheduler did not start: {schedule.tail()}")
        writer = _Appender(db, rows[half:], rate=150.0)
        writer.start()
        time.sleep(c.rng.uniform(1.0, 3.0))
        started = time.monotonic()
        restarted = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        back = _wait_ready(h, 120)
        down = time.monotonic() - started
        t.check(restarted.returncode == 0, f"pg_ctlcluster restart: {restarted.stderr[:200]}")
        t.check(back, "the server did not come back within 120 s")
        writer.join()
        up = time.monotonic()
        caught = False
        while not caught and time.monotonic() - up < 180 and schedule.alive():
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                caught = log_backlog(db.engine) == 0
            time.sleep(0.2)
        recovered = time.monotonic() - up
        failed = sum(r.get("result") == "failed" for r in schedule.records())
        t.check(caught, "the scheduler did not catch up after the restart")
        h.alive_and_clean(t, schedule, "schedule across a server restart")
        committed = count_rows(db.engine, "event_log")
        expected = half + writer.committed
        t.check(committed == expected, f"event_log holds {committed} rows, {expected} committed")
        t.events = committed
        h.compare(t, db, c.reference.of_log(db), committed, "after the server restart")
        t.consider(
            recovered + down,
            f"server restarted ({down:.1f}s) under a scheduler and a writer: {failed} ticks "
            f"failed cleanly; caught up {recovered:.1f}s after it came back",
        )
    finally:
        if schedule is not None:
            schedule.kill()
        h.drop(db)


def _wait_ready(h: Harness, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if h.postgres_problem() is None:
            return True
        time.sleep(0.2)
    return False


class _Appender(threading.Thread):
    """Appends rows one per transaction at a fixed rate, reconnecting through outages."""

    def __init__(self, db: Db, rows: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.db, self.rows, self.rate = db, rows, rate
        self.committed = 0

    def run(self) -> None:
        engine = harness_engine(self.db.url, application_name="torture-writer")
        started = time.monotonic()
        try:
            for index, row in enumerate(self.rows):
                wait = started + index / self.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                for _ in range(600):
                    try:
                        with engine.begin() as connection:
                            connection.execute(sa.insert(LOG), row)
                        self.committed += 1
                        break
                    except sa.exc.IntegrityError:  # its COMMIT went through, the answer did not
                        self.committed += 1
                        break
                    except sa.exc.SQLAlchemyError:
                        time.sleep(0.2)
        finally:
            engine.dispose()


# --------------------------------------------------------------------------- campaign: concurrency


def concurrency_trial(h: Harness, kind: str, number: int, rng: random.Random, t: Trial) -> None:
    """Writers commit out of order while two schedulers and a follow project the log."""
    seconds = float(h.args.seconds or h.plan.seconds["concurrency"])
    postgres = kind == "postgres"
    rate = 600.0 if postgres else 200.0
    rows = storable_rows(generated(int(rate * seconds * 1.5) + 200, rng.randrange(1 << 30)))
    db = h.new_db(kind, "concurrency")
    procs: list[Proc] = []
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        for replica in range(2):
            batch = rng.choice([50, 200, 1000])
            procs.append(
                h.spawn(
                    f"schedule --source db {db.flag} --every 0.3s --batch-size {batch} --log-json",
                    label=f"concurrency-schedule{replica}",
                )
            )
        poll = "" if postgres else "--poll 0.1"
        procs.append(h.spawn(f"follow --source db {db.flag} --json {poll}", label="concurrency"))
        writers = _Writers(db, rows, seconds, rate, hold=0.25 if postgres else 0.02)
        writers.run(rng, 4 if postgres else 3)
        ended = time.monotonic()
        caught = False
        while not caught and time.monotonic() - ended < 120 and all(p.alive() for p in procs):
            caught = log_backlog(db.engine) == 0
            time.sleep(0.2)
        lag = time.monotonic() - ended
        time.sleep(0.5)
        t.check(caught, "the projectors did not catch up within 120 s")
        for proc in procs:
            h.alive_and_clean(t, proc, proc.verb)
        committed = count_rows(db.engine, "event_log")
        expected = sum(len(positions) for positions in writers.commits)
        t.check(committed == expected, f"event_log has {committed} rows, {expected} committed")
        t.events = committed
        replay = h.reference(kind).of_log(db)
        h.compare(t, db, replay, committed, "concurrent projection")
        records = [r for proc in procs for r in proc.records()]
        failed = sum(r.get("result") == "failed" for r in records)
        if t.check(not failed, f"{failed} scheduler ticks failed"):
            counted = [r for r in records if r.get("result", "ok") in ("ok", "interrupted")]
            for key in COUNTERS:
                summed = sum(int(r.get(key, 0)) for r in counted)
                t.check(
                    summed == replay.counters[key],
                    f"{key}: the schedulers and follow counted {summed}, "
                    f"a clean rebuild {replay.counters[key]}",
                )
        behind = _out_of_order(writers.commits)
        share = "/".join(str(sum(int(r.get("read", 0)) for r in p.records())) for p in procs)
        t.consider(
            float(behind),
            f"{behind} of {committed} rows committed behind a higher position "
            f"({writers.rolled_back} rolled back), none missed or doubled; caught up "
            f"{lag:.1f}s after the writers (read by schedule/schedule/follow: {share})",
        )
    finally:
        for proc in procs:
            proc.kill()
        h.drop(db)


class _Writers:
    """Several writers taking rows in turn; random transaction sizes, held commits, rollbacks."""

    def __init__(
        self, db: Db, rows: list[dict[str, Any]], seconds: float, rate: float, hold: float
    ) -> None:
        self.db, self.queue = db, deque(rows)
        self.deadline = time.monotonic() + seconds
        self.rate, self.hold = rate, hold
        self.lock = threading.Lock()
        self.commits: list[list[int]] = []  # positions of each transaction, in commit order
        self.rolled_back = 0

    def run(self, rng: random.Random, count: int) -> None:
        """Run `count` writers until the time is up or the rows run out."""
        threads = [
            threading.Thread(target=self._write, args=(rng.randrange(1 << 30), count), daemon=True)
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _write(self, seed: int, writers: int) -> None:
        rng = random.Random(seed)
        engine = harness_engine(self.db.url, application_name="torture-writer")
        insert = sa.insert(LOG).returning(LOG.c.position)
        try:
            with engine.connect() as connection:
                while time.monotonic() < self.deadline:
                    with self.lock:
                        size = min(len(self.queue), rng.randint(1, 12))
                        chunk = [self.queue.popleft() for _ in range(size)]
                    if not chunk:
                        return
                    transaction = connection.begin()
                    positions = []
                    for row in chunk:
                        positions.append(int(connection.execute(insert, row).scalar_one()))
                        if rng.random() < 0.3:
                            time.sleep(rng.uniform(0, self.hold))  # others commit meanwhile
                    if rng.random() < 0.05:
                        transaction.rollback()
                        with self.lock:
                            self.rolled_back += len(chunk)
                    else:
                        with self.lock:  # one COMMIT at a time: the order is exact
                            transaction.commit()
                            self.commits.append(positions)
                    time.sleep(rng.uniform(0, writers / self.rate * 6))
        finally:
            engine.dispose()


def _out_of_order(commits: list[list[int]]) -> int:
    """Rows that became visible after a row with a higher position (a naive reader skips them)."""
    behind, highest = 0, 0
    for positions in commits:
        behind += sum(1 for p in positions if p < highest)
        highest = max(highest, *positions)
    return behind


# --------------------------------------------------------------------------- campaign: hostile

ID_FIELDS = (
    "customer_id", "contact_id", "provider_id", "channel_id", "conversation_id",
    "participant_id",
)  # fmt: skip
ENVELOPE = (
    "event_name", "event_id", "aggregate_type", "aggregate_id", "occurred_at", "actor",
    "version", "idempotency_key",
)  # fmt: skip
EVENT_NAMES = (
    "CustomerCreated", "CustomerUpdated", "CustomerEnabled", "CustomerDisabled",
    "ContactCreated", "ContactUpdated", "ContactDeleted", "ProviderConfigured",
    "ProviderUpdated", "ProviderEnabled", "ProviderDisabled", "ChannelMapped", "ChannelUpdated",
    "ChannelUnmapped", "ConversationCreated", "ConversationUpdated", "ConversationClosed",
    "ConversationReopened", "ConversationArchived", "ConversationParticipantAdded",
    "ConversationParticipantRemoved",
)  # fmt: skip
RAW_TOKENS: tuple[bytes, ...] = (
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400",
    b"100000000000000000000000", b"18446744073709551616", b"-9223372036854775809",
    b"9223372036854775807", b"9223372036854775808", b"01", b"+1", b".5", b"1.", b"0x10",
    b"-", b"tru", b"nul", b"undefined", b"1.0", b"1e0", b"-0",
    b'"\xff"', b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xe2\x82"',
    b'"\x80abc"', b'"\\ud800"', b'"\\udfff"', b'"a\\ud800b"', b'"\\ud83d\\ude00"',
    b'"\\ud83d"', b'"\\u0000"', b'"a\\u0000"', b'"\\u00"', b'"\\x41"', b'"\\/"', b'"a\x00b"',
    b'"a\tb"', b'"a\x1fb"', b"'single'", b'"unterminated', b"[1,2,]", b'{"a":1,}',
    b'{"a" 1}', b"[" * 70 + b"]" * 70, b"{}", b"[]", b'"\\u2028"', b'"\xef\xbb\xbf"',
)  # fmt: skip
EXOTIC = (
    "ünïcödé", "😀" * 3, "\u202eevil", "a\u0301", "\u2028", "\ufeff", "\u200b", "\x01\x1f",
    "\x7f", "\uff11\uff12\uff13", "\u0663", "🏳️‍🌈", "\U0010ffff", "ß", "İ", "Ω", "null",
    "true", "[]", "{}", " ", "\t", "\r", "\\", '"', "'", "<script>",
    "'; DROP TABLE customers; --",
)  # fmt: skip
TIMESTAMPS = (
    "2025-01-01T00:00:00Z", "2025-01-01T00:00:00+00:00", "2025-01-01T00:00:00.123456789Z",
    "2025-01-01T00:00:00.1234567891Z", "2025-01-01T00:00:00+01:00", "2025-01-01T00:00:00",
    "2025-02-30T00:00:00Z", "2025-01-01T24:00:00Z", "2025-01-01T23:59:60Z",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2025-01-01t00:00:00z",
    "2025-01-01 00:00:00Z", "\uff12\uff10\uff12\uff15-01-01T00:00:00Z", "2025-1-1T0:0:0Z",
    "", "yesterday", "2025-01-01T00:00:00-00:00", "2025-01-01T00:00:00.Z", "1735689600",
)  # fmt: skip
NOT_EVENTS: tuple[bytes, ...] = (
    b"null", b"[]", b"{}", b'"str"', b"42", b"true", b"\xef\xbb\xbf{}", b"{" * 2000,
    b"[" * 5000 + b"]" * 5000, b"  ", b"\t", b"\x0c", b"\r", b"\x00", b"{}" * 3, b"\x1e{}",
    b'{"event_name": "CustomerCreated"}',
)  # fmt: skip


def _remap(value: Any, key: str | None = None) -> Any:
    """Move ids into the mutants' own namespace, so a mutant never touches a good aggregate."""
    if isinstance(value, dict):
        return {k: _remap(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(v, key) for v in value]
    if isinstance(value, str) and key in (*ID_FIELDS, "participant_ids", "aggregate_id"):
        return "m_" + value
    return value


class Mutator:
    """Seeded mutations of valid events into hostile lines."""

    def __init__(self, rng: random.Random, tag: str, allow_huge: int) -> None:
        self.rng = rng
        self.tag = tag
        self.count = 0
        self.huge_left = allow_huge
        self.markers: dict[bytes, bytes] = {}

    # values ---------------------------------------------------------------------------

    def marker(self, raw: bytes | None = None) -> str:
        """A placeholder string replaced by raw bytes after serialisation."""
        name = f"@@R{len(self.markers)}@@"
        self.markers[f'"{name}"'.encode()] = raw or self.rng.choice(RAW_TOKENS)
        return name

    def text(self, size: int) -> str:
        """Random (incompressible) text of `size` characters."""
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789é中😀"
        return "".join(self.rng.choices(alphabet, k=size))

    def nested(self, depth: int) -> Any:
        """A value nested `depth` levels deep."""
        if depth > 200:  # deeper than orjson writes: raw bytes
            opening, closing = (b"[", b"]") if self.rng.random() < 0.5 else (b'{"n":', b"}")
            return self.marker(opening * depth + b'"bottom"' + closing * depth)
        value: Any = "bottom"
        for level in range(depth):
            value = [value] if level % 2 else {"n": value}
        return value

    def value(self) -> Any:
        """A hostile JSON value."""
        rng = self.rng
        pick = rng.randrange(13)
        if pick == 0:
            numbers = [None, True, False, 0, -1, 1, 2, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0]
            return rng.choice(numbers)
        if pick == 1:
            return rng.choice(["", " ", "\t", "null", "0", "1", "true", "{}", "[]", "x"])
        if pick == 2:
            return rng.choice(EXOTIC) * rng.randint(1, 3)
        if pick == 3:
            return "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(1, 40)))
        if pick == 4:
            size = rng.choice([128, 129, 255, 256, 300, 1000, 3000, 20000])
            return "x" * size if rng.random() < 0.3 else self.text(size)
        if pick == 5:
            return rng.choice([[], {}, [None], ["a", ""], {"": ""}, {"a": self.value()}])
        if pick == 6:
            return self.nested(rng.choice([2, 10, 62, 63, 64, 65, 100]))
        if pick == 7:
            return self.marker()
        if pick == 8:
            return "a\x00b" if rng.random() < 0.5 else "\x00"
        if pick == 9:
            return rng.choice(TIMESTAMPS)
        if pick == 10:
            name = rng.choice(EVENT_NAMES)
            return name if rng.random() < 0.5 else name.upper()
        if pick == 11:
            return rng.choice(["sms", "mms", "email", "voice", "voicemail", "fax", "SMS", "open"])
        return [self.value() for _ in range(rng.randint(0, 3))]

    # operations on the document -------------------------------------------------------

    def _payload(self, doc: dict[str, Any]) -> dict[str, Any]:
        payload = doc.get("payload")
        return payload if isinstance(payload, dict) else doc

    def _target(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        payload = self._payload(doc)
        places = [(doc, k) for k in doc]
        if payload is not doc:
            places += [(payload, k) for k in payload]
        return self.rng.choice(places) if places else None

    def op(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Apply one random mutation."""
        rng = self.rng
        payload = self._payload(doc)
        pick = rng.randrange(20)
        target = self._target(doc)
        if pick == 0 and target:
            target[0].pop(target[1], None)
        elif pick in (1, 2) and target:
            target[0][target[1]] = self.value()
        elif pick == 3:
            key = rng.choice(["extra", "", "\x00k", "ключ", self.marker(), "payload", "data"])
            rng.choice([doc, payload])[key] = self.value()
        elif pick == 4:
            name = str(doc.get("event_name", ""))
            doc["event_name"] = rng.choice(
                ["InvoiceIssued", name.lower(), rng.choice(EVENT_NAMES), "", " CustomerCreated",
                 f"{name}\u200b", 42, None, self.marker()]
            )  # fmt: skip
        elif pick == 5:
            kind = str(doc.get("aggregate_type", ""))
            doc["aggregate_type"] = rng.choice(
                [kind.upper(), kind.lower(), "Customer", "Conversation", "", None, f"{kind} ", 7]
            )
        elif pick == 6:
            doc["version"] = rng.choice(
                [0, -1, 1.0, "1", True, None, [], 2**63 - 1, 2**64 - 1, self.marker(), 1, 2, 10**6]
            )
        elif pick == 7:
            doc["occurred_at"] = rng.choice([*TIMESTAMPS, 0, None, self.marker()])
        elif pick == 8:
            self._ids(doc, payload)
        elif pick == 9:
            self._shape(doc)
        elif pick == 10:
            payload["changed_fields"] = rng.choice(
                [{}, [], ["name"], ["display_name", "topic"], {"status": "closed"},
                 {"customer_id": "m_other"}, {"name": 5}, {"name": None}, {"kind": "fax"},
                 {"kind": "sms"}, {"custom": {"deep": [1, 2]}}, {"": 1}, {self.marker(): 1},
                 {"normalized": "x" * 256}, {"topic": self.text(3000)}, "name"]
            )  # fmt: skip
            if rng.random() < 0.5:
                payload["name"] = self.value()
        elif pick == 11:
            payload["participant_ids"] = rng.choice(
                ["m_p", [], ["m_a", ""], [1], ["m_p"] * 3, ["x" * 256], [None], {"a": 1},
                 [f"m_p{i}" for i in range(rng.choice([10, 500]))]]
            )  # fmt: skip
        elif pick == 12:
            key = rng.choice([*ENVELOPE, "payload", "extra"])
            depth = rng.choice([63, 64, 65, 200, 1000, 1100])
            rng.choice([doc, payload])[key] = self.nested(depth)
        elif pick == 13 and target:
            size = rng.choice([300, 3000, 30000, 200000])
            target[0][target[1]] = self.text(size) if rng.random() < 0.7 else "é" * size
        elif pick == 14 and target:
            current = target[0][target[1]]
            text = current if isinstance(current, str) else "value"
            cut = rng.randint(0, len(text))
            target[0][target[1]] = text[:cut] + "\x00" + text[cut:]
        elif pick == 15 and target:
            target[0][target[1]] = rng.choice(EXOTIC) + str(target[0][target[1]])
        elif pick == 16 and target:
            if rng.random() < 0.5:
                target[0][target[1]] = self.marker()
            else:
                target[0][self.marker()] = target[0].pop(target[1])
        elif pick == 17:
            doc["actor"] = rng.choice([{}, {"id": 1}, "", 5, None, [], self.marker(), "x" * 5000])
        elif pick == 18:
            doc["idempotency_key"] = rng.choice(["", None, 5, "k" * 256, "k" * 255, self.marker()])
        elif pick == 19:
            name = rng.choice(["kind", "status", "reason", "display_name", "topic", "name"])
            values = ["fax", "SMS", None, "", "pending", "OPEN", 3, "archived", "voicemail"]
            payload[name] = rng.choice(values)
        return doc

    def _ids(self, doc: dict[str, Any], payload: dict[str, Any]) -> None:
        rng = self.rng
        pick = rng.randrange(5)
        id_field = next((k for k in ID_FIELDS if k in payload and k != "customer_id"), None)
        id_field = id_field or ("customer_id" if "customer_id" in payload else None)
        if pick == 0:
            value = "m_" + self.text(rng.choice([255, 256, 1000]) - 2)
            doc["aggregate_id"] = value
            if id_field:
                payload[id_field] = value
        elif pick == 1:
            doc["aggregate_id"] = "m_mismatch"
        elif pick == 2:
            ids = ["", "x" * 128, "x" * 129, 5, None, f"{self.tag}dup", self.text(128)]
            doc["event_id"] = rng.choice(ids)
        elif pick == 3 and id_field:
            payload[id_field] = rng.choice([5, "", None, ["m_x"], "M_" + str(payload[id_field])])
        else:
            payload["customer_id"] = rng.choice(["m_other_customer", "", None, 7])

    def _shape(self, doc: dict[str, Any]) -> None:
        rng = self.rng
        pick = rng.randrange(5)
        payload = doc.get("payload")
        if pick == 0:
            doc["payload"] = rng.choice([None, [], "x", {}, 0, [payload]])
        elif pick == 1 and isinstance(payload, dict):
            doc["data"] = doc.pop("payload")
        elif pick == 2 and isinstance(payload, dict):
            doc.pop("payload")
            for key, value in payload.items():
                doc.setdefault(key, value)
        elif pick == 3 and isinstance(payload, dict):
            doc["data"] = {"broken": True}
        else:
            doc["data"] = copy.deepcopy(payload)
            doc["payload"] = rng.choice([None, "x", {"customer_id": 1}])

    # lines ----------------------------------------------------------------------------

    def mutant(self, event: dict[str, Any]) -> bytes:
        """A hostile line derived from a valid event."""
        rng = self.rng
        self.count += 1
        self.markers = {}
        if rng.random() < 0.04:
            return self.not_an_event()
        doc = _remap(copy.deepcopy(event))
        doc["event_id"] = f"{self.tag}m{self.count}"
        if isinstance(doc.get("idempotency_key"), str):
            doc["idempotency_key"] = "m_" + doc["idempotency_key"]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            doc = self.op(doc)
        if self.huge_left and rng.random() < 0.0004:
            self.huge_left -= 1  # a line over 1 MiB
            doc["padding"] = self.text(1024 * 1024 + rng.randint(-64, 4096))
        line = orjson.dumps(doc)
        for marker, raw in self.markers.items():
            line = line.replace(marker, raw)
        if rng.random() < 0.3:
            line = self.bytes_op(line)
        return line.replace(b"\n", b" ")

    def not_an_event(self) -> bytes:
        """A line that is not an event at all."""
        if self.rng.random() < 0.3:
            return bytes(b for b in self.rng.randbytes(self.rng.randint(1, 200)) if b != 10)
        return self.rng.choice(NOT_EVENTS)

    def bytes_op(self, line: bytes) -> bytes:
        """A mutation of the serialised bytes."""
        rng = self.rng
        pick = rng.randrange(9)
        if pick == 0:
            data = bytearray(line)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice([b for b in range(256) if b != 10])
            return bytes(data)
        if pick == 1:
            return line[: rng.randrange(1, len(line))]
        if pick == 2:
            cut = rng.randrange(len(line))
            return line[:cut] + b"\x00" + line[cut:]
        if pick == 3:
            return b"\xef\xbb\xbf" + line
        if pick == 4:
            return line + rng.choice([b"x", b",", b"}", b" {}", b"\x00", b"]", b" "])
        if pick == 5:
            return b'{"version":"1",' + line[1:]  # a duplicate key the later one overrides
        if pick == 6:
            return line[:-1] + rng.choice([b',"version":"1"}', b',"event_name":7}', b',"x":1}'])
        if pick == 7:
            return b"  " + line + b"\t"
        return line + b"\r"


def hypothesis_lines(
    seed: int, count: int, templates: list[dict[str, Any]], tag: str
) -> list[bytes]:
    """Lines drawn by hypothesis: events with drawn values, drawn documents, raw bytes."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats()
        | st.text(max_size=40)
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    keys = st.sampled_from([*ENVELOPE, "payload", "data"]) | st.text(max_size=8)
    out: list[bytes] = []
    numbers = itertools.count()

    @fix_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: Any) -> None:
        mode = data.draw(st.integers(0, 4))
        if mode == 0:
            raw = data.draw(st.binary(max_size=300))
        else:
            doc = copy.deepcopy(data.draw(st.sampled_from(templates)))
            doc["event_id"] = f"{tag}h{next(numbers)}"
            payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else doc
            if mode == 1:
                where = data.draw(st.sampled_from([doc, payload]))
                if where:
                    where[data.draw(st.sampled_from(sorted(where)))] = data.draw(values)
            elif mode == 2:
                data.draw(st.sampled_from([doc, payload]))[data.draw(keys)] = data.draw(values)
            elif mode == 3:
                for key in data.draw(st.lists(st.sampled_from(sorted(doc)), max_size=3)):
                    doc.pop(key, None)
            else:
                doc = data.draw(st.dictionaries(keys, values, max_size=9))
            ascii_only = data.draw(st.booleans())
            text = json.dumps(doc, allow_nan=True, ensure_ascii=ascii_only)
            raw = text.encode("utf-8", "surrogatepass")
        out.append(raw.replace(b"\n", b" "))

    collect()
    return out


def documented_reasons() -> set[str]:
    """The quarantine reason codes listed in docs/semantics.md."""
    text = (ROOT / "docs" / "semantics.md").read_text()
    section = text.split("## Validation and quarantine", 1)[-1].split("\n## ", 1)[0]
    reasons: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            reasons.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return reasons


@dataclass
class HostileLog:
    """A hostile log: valid events (their positions) among mutants and drawn lines."""

    path: Path
    total: int
    good: dict[str, int]  # event_id -> line number of the unmutated events
    biggest: int


def hostile_log(h: Harness, kind: str, number: int, rng: random.Random) -> HostileLog:
    """Write a hostile log: each valid event followed by 0-2 mutants, hypothesis lines mixed in."""
    tag = f"h{number}{kind[0]}"
    events = h.plan.events["hostile"] // 2
    originals = [orjson.loads(x) for x in generate(events, seed=rng.randrange(1 << 30))]
    mutator = Mutator(rng, tag, allow_huge=2 if h.short else 6)
    templates = [_remap(copy.deepcopy(e)) for e in originals[:: max(1, len(originals) // 50)]]
    drawn = hypothesis_lines(rng.randrange(1 << 30), h.plan.hypothesis, templates, tag)
    lines: list[bytes] = []
    good: dict[str, int] = {}
    for event in originals:
        lines.append(orjson.dumps(event))
        good[event["event_id"]] = len(lines)
        lines.extend(mutator.mutant(event) for _ in range(rng.choice([0, 1, 1, 2])))
        if drawn and rng.random() < 0.3:
            lines.append(drawn.pop())
    lines.extend(drawn)
    path = h.workdir / f"hostile-{kind}-{number}.ndjson"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    total = sum(_counted(line) for line in lines)
    return HostileLog(path, total, good, max(len(line) for line in lines))


def hostile_trial(h: Harness, kind: str, number: int, rng: random.Random, t: Trial) -> None:
    """Mutated events and bytes: nothing crashes, bad lines quarantined, good lines applied."""
    log = hostile_log(h, kind, number, rng)
    t.events = log.total
    db = h.new_db(kind, "hostile")
    try:
        batch = rng.choice([500, 2000, 5000])
        done = h.cli(f"run --source {log.path} {db.flag} --json --batch-size {batch}")
        if h.ok(t, done, "run over hostile input"):
            _hostile_checks(h, t, kind, log, db, done.json())
    finally:
        h.drop(db)
    imported = h.new_db(kind, "hostile_db")
    try:
        _hostile_through_event_log(h, t, kind, log, imported)
    finally:
        h.drop(imported)


def _hostile_checks(
    h: Harness, t: Trial, kind: str, log: HostileLog, db: Db, counters: dict[str, Any]
) -> None:
    h.account(t, counters, log.total, "run over hostile input")
    quarantine = TABLES["quarantined_events"]
    with reading(db.engine) as connection:
        rows = connection.execute(
            sa.select(
                quarantine.c.position,
                quarantine.c.reason,
                quarantine.c.message,
                sa.func.length(quarantine.c.raw).label("raw"),
            )
        ).all()
        ledger = TABLES["processed_events"]
        counted = set(connection.execute(sa.select(ledger.c.event_id)).scalars())
    t.check(
        len(rows) == counters.get("quarantined"),
        f"{len(rows)} rows quarantined, {counters.get('quarantined')} counted",
    )
    odd = sorted({r.reason for r in rows} - documented_reasons())
    t.check(not odd, f"reason codes missing from docs/semantics.md: {odd}")
    mute = [r.position for r in rows if not r.message or not r.raw]
    t.check(not mute, f"quarantined without a message or raw text: lines {mute[:5]}")
    good_lines = set(log.good.values())
    wrong = sorted(r.position for r in rows if r.position in good_lines)
    t.check(not wrong, f"valid events quarantined: lines {wrong[:5]}")
    lost = sorted(line for event_id, line in log.good.items() if event_id not in counted)
    t.check(not lost, f"valid events not applied: lines {lost[:5]} ({len(lost)} in all)")
    replay = h.reference(kind).of_file(log.path)
    h.compare(t, db, replay, log.total, "hostile run")
    for key in COUNTERS:
        t.check(
            replay.counters[key] == counters.get(key),
            f"{key}: run counted {counters.get(key)}, a clean rebuild {replay.counters[key]}",
        )
    verified = h.cli(f"verify --source {log.path} {db.flag}")
    h.ok(t, verified, "verify after hostile input")
    checked = h.cli(f"check --source {log.path} --json")  # exit 1: it found invalid lines
    t.check(TRACEBACK not in checked.err, f"check crashed: ...{checked.err.strip()[-240:]!r}")
    if t.check(checked.rc in (0, 1), f"check exited {checked.rc}: {checked.first_error()}"):
        report = checked.json()
        t.check(
            (report.get("lines"), report.get("invalid_count")) == (log.total, len(rows)),
            f"check found {report.get('invalid_count')} invalid of {report.get('lines')} "
            f"lines; run quarantined {len(rows)} of {log.total}",
        )
    reasons = Counter(r.reason for r in rows)
    t.consider(
        float(log.biggest),
        f"{log.total:,} lines: {len(rows):,} quarantined under {len(reasons)} reason codes, "
        f"every valid event applied; biggest line {log.biggest / 1024:.0f} KiB",
    )


def _hostile_through_event_log(h: Harness, t: Trial, kind: str, log: HostileLog, db: Db) -> None:
    """The same hostile file through `import` and `run --source db`."""
    done = h.cli(f"import {log.path} {db.flag} --json")
    if h.ok(t, done, "import of hostile input"):
        result = done.json()
        stored, already = int(result.get("stored", 0)), int(result.get("already_there", 0))
        bad = int(result.get("bad", 0))
        read = result.get("read")
        t.check(read == log.total, f"import read {read} of {log.total}")
        t.check(
            stored + already + bad == log.total,
            f"import: stored {stored} + already there {already} + bad {bad} != {log.total}",
        )
    else:
        # The import failed (a defect, counted above). Still try `run --source db` on the
        # rows it would have stored, leaving out the few the database refuses.
        upgrade(db.engine)
        stored = _insert_skipping(db, storable_rows(log.path.read_bytes()))
    run = h.cli(f"run --source db {db.flag} --json")
    if h.ok(t, run, "run --source db over hostile input"):
        h.account(t, run.json(), stored, "run --source db over hostile input")
        h.compare(t, db, h.reference(kind).of_log(db), stored, "hostile event_log")
    t.events += stored


def _insert_skipping(db: Db, rows: list[dict[str, Any]]) -> int:
    """Insert rows in order in chunks, halving a chunk that fails down to the refused rows."""
    stored = 0
    pending = [rows[i : i + 512] for i in range(0, len(rows), 512)]
    while pending:
        chunk = pending.pop(0)
        try:
            with db.engine.begin() as connection:
                connection.execute(sa.insert(LOG), chunk)
            stored += len(chunk)
        except (sa.exc.SQLAlchemyError, TypeError, ValueError):
            if len(chunk) > 1:
                half = len(chunk) // 2
                pending[:0] = [chunk[:half], chunk[half:]]
    return stored


# --------------------------------------------------------------------------- campaign: load


def _load_row(trial: int, index: int) -> dict[str, Any]:
    customer = f"ld{trial}_{index:07d}"
    event = {
        "event_name": "CustomerCreated",
        "event_id": f"load-{trial}-{index}",
        "aggregate_type": "Customer",
        "aggregate_id": customer,
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": "torture:load",
        "version": 1,
        "payload": {"customer_id": customer, "name": f"Load {index}"},
    }
    return entry(orjson.dumps(event))


class _Visibility:
    """Commit and first-seen times of the load's rows, polled from the read model."""

    def __init__(self, reader: sa.Engine) -> None:
        self.reader = reader
        self.customers = TABLES["customers"]
        self.committed: dict[str, float] = {}
        self.visible: dict[str, float] = {}
        self.pending: deque[str] = deque()
        self.lock = threading.Lock()

    def committed_now(self, customer: str) -> None:
        """Record a commit that just returned."""
        stamp = time.monotonic()
        with self.lock:
            self.committed[customer] = stamp
            self.pending.append(customer)

    def poll(self, finished: Callable[[], bool], timeout: float) -> None:
        """Look for pending rows every few milliseconds until `finished` or the timeout."""
        deadline = time.monotonic() + timeout
        column = self.customers.c.customer_id
        with reading(self.reader) as connection:
            while time.monotonic() < deadline and not finished():
                with self.lock:
                    wanted = list(itertools.islice(self.pending, 0, 400))
                if wanted:
                    query = sa.select(column).where(column.in_(wanted))
                    seen = set(connection.execute(query).scalars())
                    stamp = time.monotonic()
                    with self.lock:
                        for key in seen:
                            self.visible[key] = stamp
                        self.pending = deque(k for k in self.pending if k not in seen)
                connection.rollback()  # a fresh snapshot next time
                time.sleep(0.004)


def load_trial(h: Harness, kind: str, number: int, rng: random.Random, t: Trial) -> None:
    """Append at a fixed rate while `follow` runs; latency from commit to visible row."""
    seconds = float(h.args.seconds or h.plan.seconds["load"])
    rate = float(h.args.rate)
    total = int(rate * seconds)
    db = h.new_db(kind, "load")
    follow: Proc | None = None
    writer = harness_engine(db.url, application_name="torture-writer")
    reader = harness_engine(db.url, application_name="torture-reader")
    try:
        h.ok(t, h.cli(f"migrate {db.flag}"), "migrate")
        poll = "--poll 0.05" if kind == "sqlite" else ""
        follow = h.spawn(f"follow --source db {db.flag} --json {poll}", label="load")
        seen = _Visibility(reader)
        done = threading.Event()

        def append(connection: sa.Connection, index: int) -> None:
            row = _load_row(number, index)
            connection.execute(sa.insert(LOG), row)
            connection.commit()
            seen.committed_now(row["aggregate_id"])

        def write() -> None:
            with writer.connect() as connection:
                started = time.monotonic()
                for index in range(total):
                    wait = started + index / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    append(connection, index)
            done.set()

        with writer.connect() as connection:
            append(connection, total)  # warm-up: follow is ready once this row shows
        seen.poll(lambda: bool(seen.visible), 60)
        t.check(bool(seen.visible), "follow never applied the warm-up event")
        seen.visible.clear()
        started = time.monotonic()
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        seen.poll(lambda: done.is_set() and len(seen.visible) >= total, seconds + 60)
        thread.join()
        ended = max(seen.committed.values())
        drained = max(seen.visible.values(), default=ended) - ended
        latencies = sorted(seen.visible[k] - seen.committed[k] for k in seen.visible)
        achieved = total / max(1e-9, ended - started)
        missing = total - len(seen.visible)
        kept_up = missing == 0 and drained <= 5.0 and log_backlog(db.engine) == 0
        t.check(missing == 0, f"{missing} appended events never became visible")
        t.check(kept_up, f"follow fell behind: drained {drained:.1f}s after the writer stopped")
        h.alive_and_clean(t, follow, "follow under load")
        read = sum(int(r.get("read", 0)) for r in follow.records())
        t.check(read == total + 1, f"follow read {read} events, {total + 1} were appended")
        t.events = total + 1
        h.compare(t, db, h.reference(kind).of_log(db), total + 1, "after the load")
        if latencies:
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            t.consider(
                p99,
                f"{achieved:.0f} events/s for {seconds:.0f}s: commit->visible p50 "
                f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
                f"{latencies[-1] * 1000:.0f} ms; kept up: {'yes' if kept_up else 'NO'} "
                f"(drained {drained:.2f}s after the writer stopped)",
            )
    finally:
        if follow is not None:
            follow.kill()
        writer.dispose()
        reader.dispose()
        h.drop(db)


# --------------------------------------------------------------------------- main

TRIALS: dict[str, Callable[[Harness, str, int, random.Random, Trial], None]] = {
    "kill": kill_trial,
    "db-faults": db_fault_trial,
    "concurrency": concurrency_trial,
    "hostile": hostile_trial,
    "load": load_trial,
}


def run_campaign(h: Harness, campaign: str, kind: str) -> Tally:
    """Every trial of one campaign on one database."""
    tally = Tally(campaign, kind)
    started = time.monotonic()
    count = h.args.trials or h.plan.trials[campaign]
    if campaign == "db-faults":
        faults = faults_for(h, kind)
        if not faults:
            tally.notes.append("no fault selected for this database")
            return tally
        gentle = [f for f in faults if f not in DISRUPTIVE]  # disruptive ones: one round only
        count = h.args.trials or len(faults) + len(gentle) * (h.plan.trials[campaign] - 1)
        for fault in FAULTS[kind]:
            if fault not in faults and fault in DISRUPTIVE and not h.args.faults:
                tally.skipped[fault] = DISRUPTIVE[fault]
    for number in range(count):
        if number and time.monotonic() - started > h.plan.budget:
            tally.notes.append(f"time budget reached after {number} of {count} trials")
            break
        rng = random.Random(f"{h.seed}:{campaign}:{kind}:{number}")
        trial = Trial(campaign, kind, number)
        try:
            TRIALS[campaign](h, kind, number, rng, trial)
        except Skip as skip:
            tally.skipped[trial.label or campaign] = str(skip)
            continue
        except Exception as exc:
            trial.fail(f"harness error: {exc!r}")
            traceback.print_exc()
        tally.add(trial)
        status = f"ok: {trial.worst}" if not trial.problems else f"FAILED: {trial.problems[0]}"
        label = f" ({trial.label})" if trial.label else ""
        print(f"  {campaign}/{kind} trial {number}{label} {status}", file=sys.stderr, flush=True)
    tally.seconds = time.monotonic() - started
    return tally


def parse_args(argv_: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="A fault campaign against projections on SQLite and PostgreSQL."
    )
    parser.add_argument("--campaign", default=",".join(CAMPAIGNS), help="comma-separated")
    parser.add_argument("--db", default=",".join(KINDS), help="sqlite,postgres")
    parser.add_argument("--trials", type=int, default=None, help="trials per campaign and db")
    parser.add_argument("--seconds", type=float, default=None, help="load/concurrency duration")
    parser.add_argument("--rate", type=float, default=200.0, help="load: events per second")
    parser.add_argument("--seed", type=int, default=None, help="fix every random choice")
    parser.add_argument("--short", action="store_true", help="a few small trials of each (CI)")
    parser.add_argument(
        "--fault", default="", help=f"db-faults: only these ({', '.join(FAULTS['postgres'])}, "
        f"{', '.join(FAULTS['sqlite'])})"
    )  # fmt: skip
    parser.add_argument("--pg-admin-url", default=DEFAULT_ADMIN, help="a superuser's URL")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json-out", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv_)
    args.campaigns = [c.strip() for c in args.campaign.split(",") if c.strip()]
    args.kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    args.faults = {f.strip() for f in args.fault.split(",") if f.strip()}
    known = set(FAULTS["postgres"]) | set(FAULTS["sqlite"])
    unknown = sorted(set(args.campaigns) - set(CAMPAIGNS)) + sorted(set(args.kinds) - set(KINDS))
    unknown += sorted(args.faults - known)
    if unknown:
        parser.error(f"unknown campaign, database or fault: {', '.join(unknown)}")
    if args.workdir and re.search(r"\s", str(Path(args.workdir).resolve())):
        parser.error("--workdir must not contain whitespace")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(3), "big")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv_: list[str] | None = None) -> int:
    """Run the campaigns, print the table; exit 1 when anything failed."""
    args = parse_args(argv_)
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # the harness's refused inserts
    h = Harness(args)
    started = time.monotonic()
    mode = "short" if h.short else "full"
    print(
        f"torture: seed {h.seed}, {mode} campaign: {', '.join(args.campaigns)} on "
        f"{', '.join(args.kinds)}; scratch {h.workdir}",
        flush=True,
    )
    tallies: list[Tally] = []
    problem = h.postgres_problem() if "postgres" in args.kinds else None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for campaign in args.campaigns:
            for kind in args.kinds:
                if kind == "postgres" and problem is not None:
                    tally = Tally(campaign, kind, failures=1)
                    tally.problems.append(f"PostgreSQL unreachable: {problem}")
                    tallies.append(tally)
                    continue
                tallies.append(run_campaign(h, campaign, kind))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        h.cleanup()
    print()
    print(HEADER)
    for tally in tallies:
        print(tally.line())
    failed = [t for t in tallies if t.failures]
    for tally in failed:
        print(f"\n{tally.campaign}/{tally.kind} failures:")
        for text in tally.problems[:20]:
            print(f"  - {text}")
    elapsed = time.monotonic() - started
    complete = len(tallies) == len(args.campaigns) * len(args.kinds)
    verdict = "FAILED" if failed or not complete else "passed"
    print(f"\ntorture {verdict}: seed {h.seed}, {elapsed:.0f}s", flush=True)
    if args.json_out:
        figures = {
            "seed": h.seed,
            "short": h.short,
            "seconds": round(elapsed, 1),
            "passed": verdict == "passed",
            "campaigns": [t.as_dict() for t in tallies],
        }
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0 if verdict == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
