"""`follow`: keep catching up as events arrive, until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import psycopg

from projections.config import Settings
from projections.projector import RunResult, catch_up
from projections.sources import Source
from projections.sources.eventlog import EventLogSource

CHANNEL = "projections_event_log"


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM; the previous handlers come back afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
        for _ in self._listener.notifies(timeout=self.poll, stop_after=1):
            pass

    def close(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            self._listener.close()


def follow(
    engine: Any,
    source: Source,
    config: Settings,
    *,
    stop: threading.Event,
    poll: float,
    on_result: Callable[[RunResult], None],
) -> None:
    """Catch up, wait for more, repeat until `stop` is set."""
    waiter = Waiter(source, poll)
    try:
        while not stop.is_set():
            result = catch_up(engine, source, config, should_stop=stop.is_set)
            if result.counters.read:
                on_result(result)
            if not stop.is_set():
                waiter.wait(stop)
    finally:
        waiter.close()
