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

from projections import access, redact, runs, runtime, schedule, store
from projections import migrate as migrations
from projections.check import check_log
from projections.config import Settings, VersionMode, ndjson_path, pii_key, redact_pii_key
from projections.config import database_url as read_model_url
from projections.errors import ConfigurationError, ProjectionsError
from projections.events import utc_now
from projections.follow import follow, stop_on_signals
from projections.importer import import_log
from projections.metrics import Metrics, serve
from projections.progress import BatchProgress, ImportProgress
from projections.projector import ProgressCallback, RunResult, catch_up
from projections.report import (
    print_check,
    print_import,
    print_status,
    print_verify,
    summary_line,
)
from projections.schema import PROJECTOR_TABLES
from projections.shadow import shadow_rebuild
from projections.sources import Source
from projections.status import changed_projectors, lag_problems, read_status
from projections.verify import verify

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
RedactFlag = Annotated[
    bool | None,
    typer.Option(
        "--redact-pii/--keep-pii",
        help="Store a keyed hash of channel addresses and display names (key: "
        "$PROJECTIONS_REDACT_PII_KEY; default: $PROJECTIONS_REDACT_PII, else keep).",
        show_default=False,
    ),
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


def _redacted(
    flag: bool | None, database_url: str | None, action: Callable[[], T], *, keep_rows: bool
) -> T:
    """Run a projecting verb with PII redaction on or off, never mixing both in one model."""
    key = redact_pii_key(flag)
    if keep_rows:
        redact.check_read_model(read_model_url(database_url), key)
    with redact.redacting(key):
        return action()


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
    projector: Annotated[
        list[str] | None,
        typer.Option("--projector", "-p", help="Rebuild only this projector (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted rebuild's shadow.")
    ] = False,
    keep_old: Annotated[
        bool,
        typer.Option("--keep-old", help="Keep the replaced tables in a projections_old_* schema."),
    ] = False,
    redact_pii: RedactFlag = None,
) -> None:
    """Replay the whole source into a shadow read model, then swap it in without downtime."""

    def work() -> int:
        config = runtime.settings(
            database_url, batch_size, log_url, version_mode=version_mode, strict=strict
        )
        chosen = _projectors(projector)
        if source != "db":
            ndjson_path(source)
        with (
            stop_on_signals() as stop,
            runtime.engine(config.database_url, migrate_first=True) as engine,
            runtime.source(source, config, engine) as opened,
        ):
            show = not as_json and sys.stdout.isatty()
            started = utc_now()
            with BatchProgress(out, opened, enabled=show, label="rebuild") as progress:
                result, report, resumed = shadow_rebuild(
                    engine,
                    opened,
                    config,
                    projectors=chosen,
                    resume=resume,
                    keep_old=keep_old,
                    progress=progress.update,
                    should_stop=stop.is_set,
                )
            runs.record(engine, "rebuild", opened.label, started, result)
        summary = {**result.summary(), "resumed": bool(resumed), "swapped": report is not None}
        if report is not None:
            summary.update(
                swap_seconds=round(report.swap_seconds, 3),
                rows=report.rows,
                kept_old=report.kept_old,
            )
        if as_json:
            out.print_json(orjson.dumps(summary).decode())
        else:
            line = summary_line("rebuild", result)
            if report is not None:
                kept = f", old tables kept in {report.kept_old}" if report.kept_old else ""
                line += f"; swapped in after {report.swap_seconds:.2f} s{kept}"
            out.print(line, highlight=False, soft_wrap=True)
        if report is None:
            err.print(
                "rebuild interrupted: the live read model is unchanged; "
                "`projections rebuild --resume` continues, `projections rebuild` starts over"
            )
            return 1
        return 0

    # A partial rebuild keeps the other projectors' rows: they must match the setting.
    code = _guarded(lambda: _redacted(redact_pii, database_url, work, keep_rows=bool(projector)))
    if code:
        raise typer.Exit(code)


def _projectors(names: list[str] | None) -> tuple[str, ...] | None:
    if not names:
        return None
    unknown = sorted(set(names) - set(PROJECTOR_TABLES))
    if unknown:
        raise ConfigurationError(
            f"unknown projector {', '.join(unknown)}: choose from {', '.join(PROJECTOR_TABLES)}"
        )
    return tuple(dict.fromkeys(names))


@app.command("run")
def run_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
    redact_pii: RedactFlag = None,
    rebuild_if_changed: Annotated[
        bool,
        typer.Option(
            "--rebuild-if-changed",
            help="First rebuild projectors whose rows were built by other code (see status).",
        ),
    ] = False,
) -> None:
    """Catch up once: apply every complete event after the checkpoints."""
    _guarded(
        lambda: _redacted(
            redact_pii,
            database_url,
            lambda: _project(
                "run",
                source,
                runtime.settings(
                    database_url, batch_size, log_url, version_mode=version_mode, strict=strict
                ),
                as_json,
                _catch_up_rebuilding if rebuild_if_changed else catch_up,
            ),
            keep_rows=True,
        )
    )


def _catch_up_rebuilding(
    engine: sa.Engine,
    source: Source,
    config: Settings,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Rebuild the projectors whose fingerprint changed, then catch up."""
    with engine.connect() as connection:
        changed = changed_projectors(store.read_checkpoints(connection, source.label))
    if changed:
        err.print(f"rebuilding {', '.join(changed)}: built by other handlers or tables")
        result, report, _ = shadow_rebuild(
            engine, source, config, projectors=changed, progress=progress, should_stop=should_stop
        )
        if report is None:
            return result
    return catch_up(engine, source, config, progress=progress, should_stop=should_stop)


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
    redact_pii: RedactFlag = None,
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

    _guarded(lambda: _redacted(redact_pii, database_url, work, keep_rows=True))


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


@app.command("verify")
def verify_command(
    source: SourceOption,
    database_url: DatabaseUrl = None,
    log_url: LogUrl = None,
    as_json: JsonFlag = False,
    batch_size: BatchSize = None,
    version_mode: VersionModeOption = VersionMode.sequence,
    strict: StrictFlag = False,
) -> None:
    """Replay the source into scratch tables and compare with the live ones; exit 0 if identical."""

    def work() -> int:
        config = runtime.settings(
            database_url, batch_size, log_url, version_mode=version_mode, strict=strict
        )
        if source != "db":
            ndjson_path(source)
        with (
            runtime.engine(config.database_url, migrate_first=False) as engine,
            runtime.source(source, config, engine) as opened,
        ):
            show = not as_json and sys.stdout.isatty()
            with BatchProgress(out, opened, enabled=show, label="verify") as progress:
                report = verify(engine, opened, config, progress=progress.update)
        if as_json:
            out.print_json(orjson.dumps(report.as_dict(), default=str).decode())
        else:
            print_verify(out, report)
        return 0 if report.identical else 1

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


# --- SQL users: tenant readers and PII hashes (projections/access.py, projections/redact.py) ---
ReaderRole = Annotated[str, typer.Argument(help="The reader's PostgreSQL login role.")]


@app.command("grant-reader")
def grant_reader_command(
    role: ReaderRole,
    customer: Annotated[
        list[str], typer.Option("--customer", "-c", help="A customer id it may read (repeat).")
    ],
    database_url: DatabaseUrl = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            envvar="PROJECTIONS_READER_PASSWORD",
            help="Set its login password (default: $PROJECTIONS_READER_PASSWORD, else unchanged).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Make these the only customers it may read.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create or update a login role that may only SELECT its customers' rows (PostgreSQL)."""

    def work() -> None:
        with runtime.engine(read_model_url(database_url), migrate_first=False) as engine:
            scope = access.grant_reader(engine, role, customer, password=password, replace=replace)
        if as_json:
            out.print_json(orjson.dumps(scope.as_dict()).decode())
            return
        verb = "created" if scope.created else "updated"
        out.print(f"reader {role} {verb}: reads {', '.join(scope.customers)}", highlight=False)
        if scope.unknown_customers:
            unknown = ", ".join(scope.unknown_customers)
            out.print(f"[yellow]not among customers yet:[/] {unknown}", highlight=False)

    _guarded(work)


@app.command("revoke-reader")
def revoke_reader_command(
    role: ReaderRole,
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", "-c", help="Only stop it reading this customer (repeat)."),
    ] = None,
    drop_role: Annotated[
        bool, typer.Option("--drop-role", help="Also drop the login role itself.")
    ] = False,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Take customers, or all access, away from a reader role (PostgreSQL)."""

    def work() -> None:
        with runtime.engine(read_model_url(database_url), migrate_first=False) as engine:
            scope = access.revoke_reader(engine, role, customer or (), drop_role=drop_role)
        if as_json:
            out.print_json(orjson.dumps(scope.as_dict()).decode())
        elif scope.dropped:
            out.print(f"reader {role} dropped", highlight=False)
        elif scope.customers:
            out.print(f"reader {role}: reads {', '.join(scope.customers)}", highlight=False)
        else:
            out.print(f"reader {role}: reads nothing", highlight=False)

    _guarded(work)


@app.command("hash-pii")
def hash_pii_command(
    value: Annotated[str, typer.Argument(help="A channel address or display name.")],
) -> None:
    """Print the keyed hash that stands for VALUE in a read model built with --redact-pii."""
    print(_guarded(lambda: redact.PiiRedactor(pii_key()).hash(value)))


def main() -> None:
    """Entry point for `python -m projections`."""
    app()
