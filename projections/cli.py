"""The command line: one verb per job, --json for scripts, exit codes 0 / 1 / 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console

from projections import migrate as migrations
from projections import runs, runtime, schedule
from projections.check import check_log
from projections.config import Settings, VersionMode, ndjson_path
from projections.errors import ProjectionsError
from projections.events import utc_now
from projections.follow import follow, stop_on_signals
from projections.importer import import_log
from projections.metrics import Metrics, serve
from projections.progress import BatchProgress, ImportProgress
from projections.projector import RunResult, catch_up, rebuild
from projections.report import print_check, print_import, print_status, summary_line
from projections.status import lag_problems, read_status

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


def _project(
    verb: str,
    source_name: str,
    config: Settings,
    as_json: bool,
    work: Callable[..., RunResult],
) -> None:
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


@app.command("migrate")
def migrate_command(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the read-model schema (alembic migrations)."""

    def work() -> None:
        config = runtime.settings(database_url)
        with runtime.engine(config.database_url, migrate_first=False) as engine:
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
    log_url: LogUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
) -> None:
    """Empty the read models and replay the whole source from its start."""
    _guarded(
        lambda: _project(
            "rebuild",
            source,
            runtime.settings(
                database_url, batch_size, log_url, version_mode=version_mode, strict=strict
            ),
            as_json,
            rebuild,
        )
    )


@app.command("run")
def run_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
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
            runtime.settings(
                database_url, batch_size, log_url, version_mode=version_mode, strict=strict
            ),
            as_json,
            catch_up,
        )
    )


@app.command("follow")
def follow_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.05, help="Seconds between checks without a signal.")
    ] = 0.5,
) -> None:
    """Keep catching up as events arrive (LISTEN/NOTIFY on PostgreSQL), until SIGINT/SIGTERM."""

    def report(result: RunResult) -> None:
        if as_json:
            print(orjson.dumps(result.summary()).decode(), flush=True)
        else:
            out.print(summary_line("follow", result), highlight=False, soft_wrap=True)

    def work() -> None:
        config = runtime.settings(
            database_url, batch_size, log_url, version_mode=version_mode, strict=strict
        )
        if source != "db":
            ndjson_path(source)
        with (
            stop_on_signals() as stop,
            runtime.engine(config.database_url, migrate_first=True) as engine,
            runtime.source(source, config, engine) as opened,
        ):
            follow(engine, opened, config, stop=stop, poll=poll, on_result=report)

    _guarded(work)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="The NDJSON log to append (.ndjson, .jsonl, .gz).")],
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Write nothing at all when any line is bad.")
    ] = False,
    as_json: JsonFlag = False,
    show: Annotated[int, typer.Option("--show", help="How many bad lines to list.")] = 20,
) -> None:
    """Append an NDJSON log to the database event log; events already there are skipped."""

    def work() -> int:
        path = ndjson_path(str(file))
        config = runtime.settings(database_url, log=log_url)
        with (
            runtime.engine(config.database_url, migrate_first=True) as engine,
            runtime.log_engine(config, engine, migrate_first=True) as log,
        ):
            progress = ImportProgress(out, path, enabled=not as_json and sys.stdout.isatty())
            with progress:
                result = import_log(log, path, strict=strict, on_progress=progress.update)
        if as_json:
            out.print_json(orjson.dumps(result.as_dict()).decode())
        else:
            print_import(out, result, show)
        return 0 if result.written else 1

    code = _guarded(work)
    if code:
        raise typer.Exit(code)


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
def status_command(
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    as_json: JsonFlag = False,
    max_lag: Annotated[
        int | None,
        typer.Option("--max-lag", min=0, help="Exit 1 when a projector lags more events."),
    ] = None,
    max_lag_seconds: Annotated[
        float | None,
        typer.Option("--max-lag-seconds", min=0, help="Exit 1 when a projector lags more seconds."),
    ] = None,
) -> None:
    """Show checkpoints with lag, row counts, quarantine, anomalies and the last run."""

    def work() -> int:
        config = runtime.settings(database_url, log=log_url)
        with (
            runtime.engine(config.database_url, migrate_first=False) as engine,
            runtime.log_engine(config, engine, migrate_first=False) as log,
        ):
            status = read_status(engine, log)
        if as_json:
            out.print_json(orjson.dumps(status, default=str).decode())
        else:
            print_status(out, status)
        problems = lag_problems(status, max_lag, max_lag_seconds)
        for problem in problems:
            err.print(f"[bold red]unhealthy:[/] {problem}", highlight=False)
        return 1 if problems else 0

    code = _guarded(work)
    if code:
        raise typer.Exit(code)


@app.command("schedule")
def schedule_command(
    source: SourceOption,
    every: Annotated[
        str | None, typer.Option("--every", help="Interval between catch-ups: 30s, 5m, 1h.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help='Crontab schedule instead, e.g. "*/5 * * * *".')
    ] = None,
    jitter: Annotated[
        float | None, typer.Option("--jitter", min=0, help="Random delay of up to N seconds.")
    ] = None,
    misfire_grace: Annotated[
        float, typer.Option("--misfire-grace", min=1, help="Seconds a late tick may still run.")
    ] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics and /healthz on this port."),
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="One JSON object per run.")] = False,
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
) -> None:
    """Catch up on a schedule until SIGINT/SIGTERM; one replica at a time on PostgreSQL."""

    def work() -> None:
        config = runtime.settings(
            database_url, batch_size, log_url, version_mode=version_mode, strict=strict
        )
        when = schedule.trigger(every, cron, jitter)
        if source != "db":
            ndjson_path(source)
        options = schedule.Options(misfire_grace=misfire_grace, log_json=log_json)
        metrics = Metrics()
        with (
            stop_on_signals() as stop,
            runtime.engine(config.database_url, migrate_first=True) as engine,
            runtime.source(source, config, engine) as opened,
        ):
            server = serve(metrics, metrics_port) if metrics_port is not None else None
            job = schedule.CatchUpJob(
                engine, opened, config, options, metrics, stop, schedule.emit_line
            )
            try:
                schedule.run_schedule(job, when, options)
            finally:
                if server is not None:
                    server.shutdown()

    _guarded(work)


def main() -> None:
    """Entry point for `python -m projections`."""
    app()
