"""`schedule`: catch-up as an APScheduler job, one replica at a time, surviving lost connections."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from projections import dialect, runs, store
from projections.config import Settings
from projections.errors import ConfigurationError, ProjectionsError
from projections.events import utc_now
from projections.fold import Counters
from projections.lag import lag_of
from projections.metrics import OUTCOMES, Metrics
from projections.projector import RunResult, catch_up
from projections.sources import Source, SourceBatch

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_BACKOFF = 60.0


def parse_every(text: str) -> float:
    """Seconds from '30s', '5m', '1h', '500ms' or a plain number of seconds."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(f"--every {text!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def trigger(every: str | None, cron: str | None, jitter: float | None) -> Any:
    """The APScheduler trigger for --every or --cron (exactly one)."""
    if (every is None) == (cron is None):
        raise ConfigurationError("give exactly one of --every or --cron")
    if every is not None:
        return IntervalTrigger(seconds=parse_every(every), jitter=jitter, timezone=UTC)
    try:
        return CronTrigger.from_crontab(str(cron), timezone=UTC)
    except ValueError as exc:
        raise ConfigurationError(f"--cron {cron!r}: {exc}") from None


@dataclass
class Options:
    """How the job runs and reports."""

    misfire_grace: float = 30.0
    log_json: bool = False


class ProjectorLocks:
    """Session-level advisory locks, one per projector, on a connection of their own.

    A replica that cannot take every lock skips its tick; a replica that dies loses its
    connection and with it the locks, so another takes over at its next tick.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: sa.Connection | None = None

    def acquire(self) -> str | None:
        """Take every projector's lock; the name of the one held elsewhere, else None."""
        if self.engine.dialect.name != "postgresql":
            return None  # SQLite: BEGIN IMMEDIATE already serialises every batch
        self.connection = self.engine.connect()
        taken: list[int] = []
        for name in store.PROJECTORS:
            key = dialect.lock_key(f"projector:{name}")
            got = self.connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            self.connection.commit()
            if not got:
                self.release(taken)
                return name
            taken.append(key)
        self._taken = taken
        return None

    def release(self, keys: list[int] | None = None) -> None:
        """Give the locks back and close the connection."""
        if self.connection is None:
            return
        try:
            for key in keys if keys is not None else getattr(self, "_taken", []):
                self.connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            self.connection.commit()
        except sa.exc.SQLAlchemyError:
            pass  # a lost connection has released its locks already
        finally:
            self.connection.close()
            self.connection = None
            self._taken = []


class CatchUpJob:
    """One tick: lock, catch up, log one line, update metrics, back off after a failure."""

    def __init__(
        self,
        engine: Engine,
        source: Source,
        config: Settings,
        options: Options,
        metrics: Metrics,
        stop: threading.Event,
        emit: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.source = source
        self.config = config
        self.options = options
        self.metrics = metrics
        self.stop = stop
        self.emit = emit
        self.running = threading.Lock()
        self.failures = 0
        self.scheduler: BlockingScheduler | None = None
        self._batch_started = 0.0

    def __call__(self) -> None:
        """Run one tick unless one is already running."""
        if self.stop.is_set() or not self.running.acquire(blocking=False):
            return
        try:
            self._tick()
        finally:
            self.running.release()

    def _tick(self) -> None:
        started, clock = utc_now(), time.monotonic()
        locks = ProjectorLocks(self.engine)
        try:
            held = locks.acquire()
            if held is not None:
                self.metrics.runs.labels("skipped").inc()
                self._log("skipped", clock, reason=f"another replica holds projector {held}")
                return
            self._batch_started = time.monotonic()
            result = catch_up(
                self.engine,
                self.source,
                self.config,
                progress=self._on_batch,
                should_stop=self.stop.is_set,
            )
        except (
            sa.exc.SQLAlchemyError,
            psycopg.Error,
            sqlite3.Error,
            ProjectionsError,
            OSError,
        ) as exc:
            self._failed(started, clock, exc)
            return
        finally:
            locks.release()
        self._succeeded(started, clock, result)

    def _on_batch(self, batch: SourceBatch, counters: Counters) -> None:
        now = time.monotonic()
        self.metrics.batch_seconds.observe(now - self._batch_started)
        self._batch_started = now

    def _succeeded(self, started: datetime, clock: float, result: RunResult) -> None:
        self.failures = 0
        counters = result.counters.as_dict()
        for outcome in OUTCOMES:
            self.metrics.events.labels(outcome).inc(counters[outcome])
        lag_events, lag_seconds = self._lag()
        if lag_events is not None:
            self.metrics.lag_events.set(lag_events)
        if lag_seconds is not None:
            self.metrics.lag_seconds.set(lag_seconds)
        self.metrics.last_success.set(time.time())
        self.metrics.healthy, self.metrics.last_result = True, "ok"
        self.metrics.runs.labels("ok").inc()
        self._record(started, result, None)
        self._log(
            "interrupted" if result.interrupted else "ok",
            clock,
            **result.summary(),
            lag_events=lag_events,
            lag_seconds=lag_seconds,
        )

    def _failed(self, started: datetime, clock: float, exc: BaseException) -> None:
        self.failures += 1
        self.metrics.healthy, self.metrics.last_result = False, "failed"
        self.metrics.runs.labels("failed").inc()
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        delay = min(MAX_BACKOFF, 2.0 ** (self.failures - 1))
        self._record(started, None, message)
        self._log("failed", clock, error=message, retry_in_s=delay, failures=self.failures)
        if self.scheduler is not None and not self.stop.is_set():
            self.scheduler.add_job(
                self,
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=delay),
                id="retry",
                replace_existing=True,
            )

    def _lag(self) -> tuple[int | None, float | None]:
        try:
            with self.engine.connect() as connection:
                checkpoints = store.read_checkpoints(connection, self.source.label)
            first = min(checkpoints.values(), key=lambda c: c.position)
            lag = lag_of(self.source, first)
            return lag.events, lag.seconds
        except (sa.exc.SQLAlchemyError, ProjectionsError, OSError):
            return None, None

    def _record(self, started: datetime, result: RunResult | None, error: str | None) -> None:
        # When the database is gone, the log line still tells the story.
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            runs.record(self.engine, "schedule", self.source.label, started, result, error)

    def _log(self, result: str, clock: float, **fields: Any) -> None:
        duration = round(time.monotonic() - clock, 3)
        record = {
            "time": utc_now().isoformat(),
            "job": "catch-up",
            "result": result,
            "duration_s": duration,
            **fields,
        }
        if self.options.log_json:
            self.emit(orjson.dumps(record).decode())
            return
        details = ", ".join(f"{k} {v}" for k, v in fields.items() if v is not None)
        self.emit(f"{record['time']} catch-up {result} in {duration} s: {details}")


def run_schedule(job: CatchUpJob, when: Any, options: Options) -> None:
    """Run ticks until `job.stop` is set; the running batch finishes before returning."""
    scheduler = BlockingScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": int(options.misfire_grace),
        },
    )
    job.scheduler = scheduler
    scheduler.add_job(job, when, id="catch-up", next_run_time=datetime.now(UTC))
    watcher = threading.Thread(target=_shutdown_on_stop, args=(job, scheduler), daemon=True)
    watcher.start()
    scheduler.start()
    # The scheduler stopped taking ticks; wait for a running one to commit its batch.
    job.running.acquire(timeout=60)


def _shutdown_on_stop(job: CatchUpJob, scheduler: BlockingScheduler) -> None:
    job.stop.wait()
    scheduler.shutdown(wait=False)


def emit_line(line: str) -> None:
    """Write one log line to stdout at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
