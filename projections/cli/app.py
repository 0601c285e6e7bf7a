"""The Typer app, the options every verb shares, and turning errors into exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from rich.console import Console

from projections.config import Settings, VersionMode, ndjson_path, redact_pii_key
from projections.config import database_url as read_model_url
from projections.errors import ProjectionsError

if TYPE_CHECKING:
    from projections.projector import RunResult

# Each verb imports what it needs when it runs: `--help`, and a verb with little to
# do, should not pay for alembic, the scheduler or the other verbs' modules.

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
        help="Read-model database (default: $PROJECTIONS_DATABASE_URL, "
        "else sqlite:///projections.db).",
        show_default=False,
    ),
]
LogUrl = Annotated[
    str | None,
    typer.Option(
        "--log-url",
        help="Database holding event_log, when not the read model's "
        "(default: $PROJECTIONS_LOG_URL).",
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
        "--batch-size",
        min=1,
        help="Events read and folded at a time (default 5000).",
        show_default=False,
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
RedactFlag = Annotated[
    bool | None,
    typer.Option(
        "--redact-pii/--keep-pii",
        help="Store a keyed hash of channel addresses and display names (key: "
        "$PROJECTIONS_REDACT_PII_KEY; default: $PROJECTIONS_REDACT_PII, else keep).",
        show_default=False,
    ),
]


def database_errors() -> tuple[type[Exception], ...]:
    """The driver and SQLAlchemy errors that become "database error" (imported on failure)."""
    import sqlite3

    import psycopg
    import sqlalchemy as sa

    return sa.exc.SQLAlchemyError, psycopg.Error, sqlite3.Error


def guarded(action: Callable[[], T]) -> T:
    """Run a command body, turning our errors into a message and an exit code."""
    try:
        return action()
    except ProjectionsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except database_errors() as exc:
        # The bulk paths use the drivers directly: their errors arrive unwrapped.
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err.print(f"[bold red]database error:[/] {detail}", highlight=False)
        raise typer.Exit(1) from None


def with_redaction(
    flag: bool | None, database_url: str | None, action: Callable[[], T], *, keep_rows: bool
) -> T:
    """Run a projecting verb with PII redaction on or off, never mixing both in one model."""
    from projections import redact

    key = redact_pii_key(flag)
    if keep_rows:
        redact.check_read_model(read_model_url(database_url), key)
    with redact.redacting(key):
        return action()


def project(
    verb: str,
    source_name: str,
    config: Settings,
    as_json: bool,
    work: Callable[..., RunResult],
) -> None:
    from projections import runs, runtime
    from projections.events import utc_now
    from projections.progress import BatchProgress
    from projections.report import summary_line
    from projections.signals import stop_on_signals

    if source_name != "db":
        ndjson_path(source_name)  # refuse a bad path before touching the database
    with (
        stop_on_signals() as stop,
        runtime.engine(config.database_url, migrate_first=True) as engine,
        runtime.source(source_name, config, engine) as source,
    ):
        show = not as_json and sys.stdout.isatty()
        started = utc_now()
        with BatchProgress(out, source, enabled=show, label=verb) as progress:
            result = work(engine, source, config, progress=progress.update, should_stop=stop.is_set)
        runs.record(engine, verb, source.label, started, result)
    if as_json:
        out.print_json(orjson.dumps(result.summary()).decode())
    else:
        out.print(summary_line(verb, result), highlight=False, soft_wrap=True)
