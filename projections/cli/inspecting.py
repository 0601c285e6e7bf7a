"""Verbs that only look: check, status, verify."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from projections.cli.app import (
    BatchSize,
    DatabaseUrl,
    JsonFlag,
    LogUrl,
    SourceOption,
    StrictFlag,
    VersionModeOption,
    app,
    err,
    guarded,
    out,
)
from projections.config import VersionMode, ndjson_path


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
        from projections import runtime
        from projections.progress import BatchProgress
        from projections.report import print_verify
        from projections.verify import verify

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

    code = guarded(work)
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
        from projections.check import check_log
        from projections.report import print_check

        path = ndjson_path(source)
        report = check_log(path, strict=strict)
        if as_json:
            out.print_json(orjson.dumps(report.as_dict()).decode())
        else:
            print_check(out, report, show)
        return 1 if report.invalid_count else 0

    code = guarded(work)
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
        from projections import runtime
        from projections.report import print_status
        from projections.status import lag_problems, read_status

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

    code = guarded(work)
    if code:
        raise typer.Exit(code)
