"""What the verbs share: settings from flags, engines that migrate, sources by name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from projections import migrate as migrations
from projections.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_RESIDENT_ROWS,
    Settings,
    database_url,
    env_int,
    env_seconds,
    log_url,
    ndjson_path,
)
from projections.db import create_engine, translate_errors
from projections.sources import Source
from projections.sources.eventlog import EventLogSource
from projections.sources.ndjson import NdjsonSource


def settings(
    url: str | None, batch_size: int | None = None, log: str | None = None, **extra: Any
) -> Settings:
    """Settings from flags, then PROJECTIONS_* variables, then defaults."""
    size = batch_size or env_int("PROJECTIONS_BATCH_SIZE", DEFAULT_BATCH_SIZE)
    return Settings(
        database_url=database_url(url),
        log_url=log_url(log),
        batch_size=size,
        commit_seconds=env_seconds("PROJECTIONS_COMMIT_SECONDS"),
        resident_rows=env_int("PROJECTIONS_RESIDENT_ROWS", DEFAULT_RESIDENT_ROWS),
        **extra,
    )


@contextmanager
def engine(url: sa.URL, *, migrate_first: bool) -> Iterator[sa.Engine]:
    """An engine whose connection errors become clear messages, migrated first if asked."""
    opened = create_engine(url)
    try:
        with translate_errors(url):
            if migrate_first and not migrations.is_current(opened):
                migrations.upgrade(opened)
            yield opened
    finally:
        opened.dispose()


@contextmanager
def log_engine(
    config: Settings, read_model: sa.Engine, *, migrate_first: bool
) -> Iterator[sa.Engine]:
    """The engine of the database holding event_log (the read model's unless --log-url)."""
    if config.log_url is None or config.log_url == config.database_url:
        yield read_model
        return
    with engine(config.log_url, migrate_first=migrate_first) as opened:
        yield opened


@contextmanager
def source(name: str, config: Settings, read_model: sa.Engine) -> Iterator[Source]:
    """The source SRC names: an NDJSON file, or 'db' for the database event log."""
    if name == "db":
        with log_engine(config, read_model, migrate_first=False) as log:
            opened: Source = EventLogSource(log)
            with translate_errors(log.url):
                yield opened
        return
    opened = NdjsonSource(ndjson_path(name))
    try:
        yield opened
    finally:
        opened.close()
