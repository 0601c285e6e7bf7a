"""`check`: validate a whole log without writing, and say which version mode it needs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from projections.events import Event, Invalid, Unknown, decode
from projections.sources.ndjson import NdjsonSource

READ_BATCH = 10_000
KEPT_INVALID = 1_000


@dataclass
class CheckReport:
    """What `check` found in a log."""

    source: str
    lines: int = 0
    events: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    invalid_count: int = 0
    duplicate_event_ids: int = 0
    idempotency_retries: int = 0
    version_repeats: int = 0
    aggregates: int = 0
    aggregates_with_repeats: int = 0
    aggregates_with_several: int = 0
    recommended_version_mode: str = "sequence"

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "source": self.source,
            "lines": self.lines,
            "valid": sum(self.events.values()),
            "events": dict(sorted(self.events.items())),
            "unknown": dict(sorted(self.unknown.items())),
            "invalid_count": self.invalid_count,
            "invalid_reasons": dict(sorted(self.invalid_reasons.items())),
            "invalid": self.invalid,
            "duplicate_event_ids": self.duplicate_event_ids,
            "idempotency_retries": self.idempotency_retries,
            "version_repeats": self.version_repeats,
            "aggregates": self.aggregates,
            "aggregates_with_repeats": self.aggregates_with_repeats,
            "aggregates_with_several_events": self.aggregates_with_several,
            "recommended_version_mode": self.recommended_version_mode,
        }


def check_log(path: Path, *, strict: bool = False) -> CheckReport:
    """Read every complete line of an NDJSON log and report on it."""
    source = NdjsonSource(path)
    report = CheckReport(source=source.label)
    seen_ids: set[str] = set()
    seen_keys: set[tuple[str, str, str]] = set()
    last_version: dict[tuple[str, str], int] = {}
    repeated: set[tuple[str, str]] = set()
    several: set[tuple[str, str]] = set()
    position, state = 0, cast(dict[str, Any], {})
    try:
        while True:
            batch = source.read(position, state, READ_BATCH)
            if batch.position == position:
                break
            position, state = batch.position, batch.state
            for line_no, line in batch.lines:
                report.lines += 1
                item = decode(line_no, line, strict=strict)
                if isinstance(item, Invalid):
                    _record_invalid(report, item)
                elif isinstance(item, Unknown):
                    report.unknown[item.name] += 1
                else:
                    _record_event(
                        report, item, seen_ids, seen_keys, last_version, repeated, several
                    )
    finally:
        source.close()
    report.aggregates = len(last_version)
    report.aggregates_with_repeats = len(repeated)
    report.aggregates_with_several = len(several)
    # Schema versions repeat in most aggregates with several events; a sequence log
    # repeats one only in the odd stale re-delivery.
    if repeated and len(repeated) * 2 >= len(several):
        report.recommended_version_mode = "none"
    return report


def _record_invalid(report: CheckReport, item: Invalid) -> None:
    report.invalid_count += 1
    report.invalid_reasons[item.reason] += 1
    if len(report.invalid) < KEPT_INVALID:
        report.invalid.append(
            {
                "line": item.position,
                "reason": item.reason,
                "message": item.message,
                "event_id": item.event_id,
            }
        )


def _record_event(
    report: CheckReport,
    event: Event,
    seen_ids: set[str],
    seen_keys: set[tuple[str, str, str]],
    last_version: dict[tuple[str, str], int],
    repeated: set[tuple[str, str]],
    several: set[tuple[str, str]],
) -> None:
    report.events[event.name] += 1
    if event.event_id in seen_ids:
        report.duplicate_event_ids += 1
        return
    seen_ids.add(event.event_id)
    if event.idempotency_key is not None:
        key = (event.family.name, event.aggregate_id, event.idempotency_key)
        if key in seen_keys:
            report.idempotency_retries += 1
            return
        seen_keys.add(key)
    aggregate = (event.family.name, event.aggregate_id)
    last = last_version.get(aggregate)
    if last is not None:
        several.add(aggregate)
    if last is not None and event.version <= last:
        report.version_repeats += 1
        repeated.add(aggregate)
    last_version[aggregate] = max(event.version, last or 0)
