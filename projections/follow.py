"""`follow`: keep catching up as events arrive, until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from projections.config import Settings
from projections.errors import DatabaseUnavailableError
from projections.projector import RunResult, catch_up
from projections.sources import Source
from projections.sources.eventlog import EventLogSource

CHANNEL = "projections_event_log"
MAX_BACKOFF = 30.0


class Waiter:
    """Waits for new events: LISTEN/NOTIFY on PostgreSQL's event log, else polling."""

    def __init__(self, source: Source, poll: float) -> None:
        self.poll = poll
        self._listener: psycopg.Connection[Any] | None = None
        if isinstance(source, EventLogSource) and source.postgres:
            url = source.engine.url.set(drivername="postgresql")
            dsn = url.render_as_string(hide_password=False)
            self._listener = psycopg.connect(dsn, autocommit=True, application_name="projections")
            self._listener.execute(f"LISTEN {CHANNEL}")

    def wait(self, stop: threading.Event) -> None:
        """Return when events may have arrived, the poll interval passed, or stop is set."""
        if self._listener is None:
            stop.wait(self.poll)
            return
        # A notification wakes us at once; the timeout covers rows held back by an
        # older transaction that commits without notifying.
        try:
            for _ in self._listener.notifies(timeout=self.poll, stop_after=1):
                pass
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"lost the LISTEN connection: {exc}") from exc

    def close(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()


def follow(
    engine: Any,
    source: Source,
    config: Settings,
    *,
    stop: threading.Event,
    poll: float,
    on_result: Callable[[RunResult], None],
    on_failure: Callable[[str, float], None] | None = None,
) -> None:
    """Catch up, wait for more, repeat until `stop` is set; a lost database is retried."""
    waiter: Waiter | None = None
    failures = 0
    try:
        while not stop.is_set():
            try:
                if waiter is None:
                    waiter = Waiter(source, poll)
                result = catch_up(engine, source, config, should_stop=stop.is_set)
                if result.counters.read:
                    on_result(result)
                if not stop.is_set():
                    waiter.wait(stop)
            except (
                sa.exc.OperationalError,
                sa.exc.InterfaceError,
                psycopg.OperationalError,
                DatabaseUnavailableError,
            ) as exc:
                # The server went away or restarted: wait, then start listening again.
                failures += 1
                delay = min(MAX_BACKOFF, 2.0 ** (failures - 1))
                if on_failure is not None:
                    on_failure(
                        str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], delay
                    )
                if waiter is not None:
                    waiter.close()
                    waiter = None
                stop.wait(delay)
                continue
            failures = 0
    finally:
        if waiter is not None:
            waiter.close()
