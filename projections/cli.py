"""The command line: one verb per job, --json for scripts, exit codes 0 / 1 / 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console

from projections import migrate as migrations
from projections.check import check_log
from projections.config import (
    DEFAULT_BATCH_SIZE,
    Settings,
    VersionMode,
    database_url,
    env_int,
    ndjson_path,
)
from projections.db import create_engine, translate_errors
from projections.errors import ConfigurationError, ProjectionsError
from projections.progress import BatchProgress
from projections.projector import RunResult, catch_up, rebuild
from projections.report import print_check, print_status, summary_line
from projections.sources import Source
from projections.sources.ndjson import NdjsonSource
from projections.status import read_status

app = typer.Typer(
    help="Keep SQL read models of customers, contacts, providers, channels and conversations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Read-model database (default: $PROJECTIONS_DATABASE_URL, else sqlite:///projections.db).",
        show_default=False,
    ),
]
SourceOption = Annotated[
    str, typer.Option("--source", "-s", help="An NDJSON file (.ndjson, .jsonl, .gz) or 'db'.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, help="Events per transaction (default 5000).", show_default=False
    ),
]
VersionModeOption = Annotated[
    VersionMode,
    typer.Option(
        "--version-mode", help="sequence: versions count per aggregate; none: ignore them."
    ),
]
StrictFlag = Annotated[
    bool, typer.Option("--strict", help="Quarantine unknown event names instead of skipping them.")
]


def _guarded(action: Callable[[], T]) -> T:
    """Run a command body, turning our errors into a message and an exit code."""
    try:
        return action()
    except ProjectionsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except sa.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err.print(f"[bold red]database error:[/] {detail}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _settings(url: str | None, batch_size: int | None = None, **extra: Any) -> Settings:
    size = batch_size or env_int("PROJECTIONS_BATCH_SIZE", DEFAULT_BATCH_SIZE)
    return Settings(database_url=database_url(url), batch_size=size, **extra)


def open_source(name: str, settings: Settings) -> Source:
    """The source SRC names: an NDJSON file, or 'db' for the database event log."""
    if name == "db":
        raise ConfigurationError(
            "the database event log source is not available in this version; use an NDJSON file"
        )
    return NdjsonSource(ndjson_path(name))


@contextmanager
def _engine(settings: Settings, *, migrate_first: bool) -> Iterator[sa.Engine]:
    engine = create_engine(settings.database_url)
    try:
        with translate_errors(settings.database_url):
            if migrate_first and not migrations.is_current(engine):
                migrations.upgrade(engine)
            yield engine
    finally:
        engine.dispose()


def _project(
    verb: str,
    source_name: str,
    settings: Settings,
    as_json: bool,
    work: Callable[..., RunResult],
) -> None:
    source = open_source(source_name, settings)
    try:
        with _engine(settings, migrate_first=True) as engine:
            show = not as_json and sys.stdout.isatty()
            with BatchProgress(out, source, enabled=show, label=verb) as progress:
                result = work(engine, source, settings, progress=progress.update)
    finally:
        source.close()
    if as_json:
        out.print_json(orjson.dumps(result.summary()).decode())
    else:
        out.print(summary_line(verb, result), highlight=False, soft_wrap=True)


@app.command("migrate")
def migrate_command(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the read-model schema (alembic migrations)."""

    def work() -> None:
        settings = _settings(database_url)
        with _engine(settings, migrate_first=False) as engine:
            before, after = migrations.upgrade(engine)
        if before == after:
            out.print(f"schema already at revision {after}")
        else:
            out.print(f"schema upgraded from {before or 'empty'} to revision {after}")

    _guarded(work)


@app.command("rebuild")
def rebuild_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
) -> None:
    """Drop the read models and replay the whole source from its start."""
    _guarded(
        lambda: _project(
            "rebuild",
            source,
            _settings(database_url, batch_size, version_mode=version_mode, strict=strict),
            as_json,
            rebuild,
        )
    )


@app.command("run")
def run_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
) -> None:
    """Catch up once: apply every complete event after the checkpoints."""
    _guarded(
        lambda: _project(
            "run",
            source,
            _settings(database_url, batch_size, version_mode=version_mode, strict=strict),
            as_json,
            catch_up,
        )
    )


@app.command("check")
def check_command(
    source: SourceOption,
    as_json: JsonFlag = False,
    strict: StrictFlag = False,
    show: Annotated[int, typer.Option("--show", help="How many invalid lines to list.")] = 20,
) -> None:
    """Validate a log without writing anything; exit 1 when it holds invalid lines."""

    def work() -> int:
        path = ndjson_path(source)
        report = check_log(path, strict=strict)
        if as_json:
            out.print_json(orjson.dumps(report.as_dict()).decode())
        else:
            print_check(out, report, show)
        return 1 if report.invalid_count else 0

    code = _guarded(work)
    if code:
        raise typer.Exit(code)


@app.command("status")
def status_command(database_url: DatabaseUrl = None, as_json: JsonFlag = False) -> None:
    """Show checkpoints, row counts, quarantine and anomaly counts."""

    def work() -> None:
        settings = _settings(database_url)
        with _engine(settings, migrate_first=False) as engine:
            status = read_status(engine)
        if as_json:
            out.print_json(orjson.dumps(status, default=str).decode())
        else:
            print_status(out, status)

    _guarded(work)


def main() -> None:
    """Entry point for `python -m projections`."""
    app()


if __name__ == "__main__":
    main()
