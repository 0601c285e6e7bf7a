"""Verbs that write the read model: migrate, rebuild, run, follow, import, schedule."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from projections.cli.app import (
    BatchSize,
    DatabaseUrl,
    JsonFlag,
    LogUrl,
    RedactFlag,
    SourceOption,
    StrictFlag,
    VersionModeOption,
    app,
    err,
    guarded,
    out,
    project,
    with_redaction,
)
from projections.config import Settings, VersionMode, ndjson_path
from projections.errors import ConfigurationError
from projections.schema import PROJECTOR_TABLES

if TYPE_CHECKING:
    import sqlalchemy as sa

    from projections.projector import ProgressCallback, RunResult
    from projections.sources import Source


@app.command("migrate")
def migrate_command(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the read-model schema (alembic migrations)."""

    def work() -> None:
        from projections import migrate as migrations
        from projections import runtime

        config = runtime.settings(database_url)
        with runtime.engine(config.database_url, migrate_first=False) as engine:
            before, after = migrations.upgrade(engine)
        if before == after:
            out.print(f"schema already at revision {after}")
        else:
            out.print(f"schema upgraded from {before or 'empty'} to revision {after}")

    guarded(work)


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
        from projections import runs, runtime
        from projections.events import utc_now
        from projections.progress import BatchProgress
        from projections.report import summary_line
        from projections.shadow import shadow_rebuild
        from projections.signals import stop_on_signals

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
    code = guarded(
        lambda: with_redaction(redact_pii, database_url, work, keep_rows=bool(projector))
    )
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

    def work() -> None:
        from projections import runtime
        from projections.projector import catch_up

        config = runtime.settings(
            database_url, batch_size, log_url, version_mode=version_mode, strict=strict
        )
        project(
            "run", source, config, as_json, _catch_up_rebuilding if rebuild_if_changed else catch_up
        )

    guarded(lambda: with_redaction(redact_pii, database_url, work, keep_rows=True))


def _catch_up_rebuilding(
    engine: sa.Engine,
    source: Source,
    config: Settings,
    *,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Rebuild the projectors whose fingerprint changed, then catch up."""
    from projections import store
    from projections.projector import catch_up
    from projections.shadow import shadow_rebuild
    from projections.status import changed_projectors

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
    from projections.report import summary_line

    def report(result: RunResult) -> None:
        if as_json:
            print(orjson.dumps(result.summary()).decode(), flush=True)
        else:
            out.print(summary_line("follow", result), highlight=False, soft_wrap=True)

    def failed(message: str, delay: float) -> None:
        err.print(f"follow: {message}; retrying in {delay:g} s", highlight=False)

    def work() -> None:
        from projections import runtime
        from projections.follow import follow
        from projections.signals import stop_on_signals

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
            follow(
                engine,
                opened,
                config,
                stop=stop,
                poll=poll,
                on_result=report,
                on_failure=failed,
            )

    guarded(lambda: with_redaction(redact_pii, database_url, work, keep_rows=True))


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
        from projections import runtime
        from projections.importer import import_log
        from projections.progress import ImportProgress
        from projections.report import print_import

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

    code = guarded(work)
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
        from projections import runtime, schedule
        from projections.metrics import Metrics, serve
        from projections.signals import stop_on_signals

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

    guarded(work)
