"""Human-readable output of `run`, `rebuild`, `check` and `status`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from projections.check import CheckReport
    from projections.importer import ImportResult
    from projections.projector import RunResult
    from projections.verify import VerifyReport


def summary_line(verb: str, result: RunResult) -> str:
    """The one-line summary of a run (SPEC §8)."""
    c = result.counters
    state = " (interrupted)" if result.interrupted else ""
    return (
        f"{verb}{state}: read {c.read}, applied {c.applied}, noop {c.noop}, "
        f"duplicate {c.duplicate}, stale {c.stale}, unknown {c.unknown}, "
        f"quarantined {c.quarantined}, rejected {c.rejected}, anomalies {c.anomalies}, "
        f"position {result.position}"
    )


def print_check(console: Console, report: CheckReport, show: int) -> None:
    """Print a check report: counts per event name, invalid lines, duplicates, version mode."""
    from rich.table import Table

    data = report.as_dict()
    table = Table("event", "count", title=f"{report.source}: {report.lines} lines")
    for name, count in data["events"].items():
        table.add_row(name, str(count))
    for name, count in data["unknown"].items():
        table.add_row(f"{name} (unknown)", str(count))
    console.print(table)
    console.print(
        f"valid {data['valid']}, invalid {report.invalid_count}, "
        f"unknown {sum(report.unknown.values())}, duplicate event_ids "
        f"{report.duplicate_event_ids}, idempotency retries {report.idempotency_retries}, "
        f"version repeats {report.version_repeats} "
        f"(in {report.aggregates_with_repeats} of {report.aggregates} aggregates)",
        highlight=False,
    )
    if report.invalid:
        invalid = Table("line", "reason", "message", title="invalid lines")
        for item in report.invalid[:show]:
            invalid.add_row(str(item["line"]), item["reason"], item["message"])
        console.print(invalid)
        if report.invalid_count > show:
            console.print(f"… and {report.invalid_count - show} more (use --show or --json)")
    mode = report.recommended_version_mode
    if mode == "none":
        console.print(
            "versions repeat within most aggregates: this log needs [bold]--version-mode none[/]"
        )
    else:
        console.print("version mode: sequence (the default) fits this log")


def print_status(console: Console, status: dict[str, Any]) -> None:
    """Print checkpoints, table counts, quarantine and anomalies."""
    from rich.table import Table

    console.print(f"database {status['database']}, schema revision {status['schema_revision']}")
    if status["schema_revision"] is None:
        console.print("no schema yet: run `projections migrate` or `projections rebuild`")
        return
    if not status["schema_current"]:
        console.print("[yellow]schema is behind this version: run `projections migrate`[/]")
    checkpoints = Table(
        "projector", "position", "lag (events)", "lag (s)", "last event", "updated", "source"
    )
    for p in status["projectors"]:
        checkpoints.add_row(
            p["projector"],
            str(p["position"]),
            "?" if p["lag_events"] is None else str(p["lag_events"]),
            "?" if p["lag_seconds"] is None else f"{p['lag_seconds']:.0f}",
            p["last_event_id"] or "-",
            p["updated_at"] or "-",
            p["source"] or "-",
        )
    console.print(checkpoints)
    stale = [p["projector"] for p in status["projectors"] if p.get("rebuild_needed")]
    if stale:
        console.print(
            f"[yellow]rebuild needed: {', '.join(stale)} were built by other handlers or "
            "table definitions than this version's; run `projections rebuild` (or "
            "`projections run --rebuild-if-changed`)[/]"
        )
    run = status.get("last_run")
    if run:
        console.print(
            f"last run: {run['command']} {run['result']} at {run['finished_at']}"
            + (f": {run['error']}" if run["error"] else ""),
            highlight=False,
            soft_wrap=True,
        )
    tables = Table("table", "rows")
    for name, count in status["tables"].items():
        tables.add_row(name, str(count))
    console.print(tables)
    log = status.get("event_log") or {}
    if log.get("rows"):
        console.print(f"event_log: {log['rows']} rows, head position {log['head']}")
    if log.get("held_back"):
        console.print(
            f"[yellow]{log['held_back']} committed event_log rows wait for older transactions "
            "to end (they cannot be read without risking a skip):[/]"
        )
        for blocker in log["waiting_for"]:
            console.print(
                f"  pid {blocker['pid']} ({blocker['application_name'] or 'no application_name'}, "
                f"{blocker['state']}), transaction open for "
                f"{blocker['transaction_age_seconds']:.0f} s",
                highlight=False,
            )
    for title, key, group in (
        ("quarantined", "quarantined", "by_reason"),
        ("anomalies", "anomalies", "by_kind"),
    ):
        detail = ", ".join(f"{k} {v}" for k, v in status[key][group].items()) or "none"
        console.print(f"{title}: {status[key]['total']} ({detail})", highlight=False)


def print_import(console: Console, result: ImportResult, show: int) -> None:
    """Print what an import stored, found already there, and could not store."""
    for bad in result.bad[:show]:
        console.print(
            f"line {bad['line']}: {bad['reason']}: {bad['message']}",
            highlight=False,
            soft_wrap=True,
        )
    if len(result.bad) > show:
        console.print(f"… and {len(result.bad) - show} more bad lines (use --show or --json)")
    if not result.written:
        console.print(
            f"import: nothing written: {len(result.bad)} bad lines in {result.read} (--strict)",
            highlight=False,
        )
        return
    console.print(
        f"import: read {result.read}, stored {result.stored}, already there {result.already}, "
        f"bad {len(result.bad)}",
        highlight=False,
        soft_wrap=True,
    )


def print_verify(console: Console, report: VerifyReport) -> None:
    """Print the comparison of the live tables with the replay."""
    from rich.table import Table

    table = Table("table", "rows", "missing", "extra", "differing")
    for diff in report.tables:
        table.add_row(
            diff.table,
            str(diff.rows),
            str(diff.missing_count),
            str(diff.extra_count),
            str(diff.differing_count),
        )
    console.print(table)
    for diff in report.tables:
        for key in diff.missing:
            console.print(f"{diff.table}: missing {key!r}", highlight=False)
        for key in diff.extra:
            console.print(f"{diff.table}: extra {key!r}", highlight=False)
        for item in diff.differing:
            columns = ", ".join(
                f"{name} live={change['live']!r} replay={change['replay']!r}"
                for name, change in item["columns"].items()
            )
            console.print(f"{diff.table}: {item['key']!r} differs: {columns}", highlight=False)
    verdict = "identical" if report.identical else "DIFFERENT"
    console.print(f"verify at position {report.position}: {verdict}", highlight=False)
