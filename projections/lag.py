"""How far each projector is behind its source, in events and in event time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from projections.errors import ProjectionsError
from projections.sources import Source
from projections.sources.eventlog import EventLogSource
from projections.sources.ndjson import NdjsonSource
from projections.store import Checkpoint


@dataclass(frozen=True)
class Lag:
    """Events stored after a checkpoint, and how much older its last event is than the newest."""

    events: int | None
    seconds: float | None
    head_occurred_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "lag_events": self.events,
            "lag_seconds": self.seconds,
            "head_occurred_at": self.head_occurred_at.isoformat()
            if self.head_occurred_at
            else None,
        }


UNKNOWN = Lag(None, None, None)


def lag_of(source: Source, checkpoint: Checkpoint) -> Lag:
    """The lag of one checkpoint against its source (unknown when the source cannot tell)."""
    try:
        events, newest = source.backlog(checkpoint.position, checkpoint.source_state)
    except (OSError, ProjectionsError):
        return UNKNOWN
    if events == 0:
        return Lag(0, 0.0, newest)
    seconds = None
    if newest is not None and checkpoint.last_occurred_at is not None:
        seconds = max(0.0, (newest - checkpoint.last_occurred_at).total_seconds())
    return Lag(events, seconds, newest)


def source_for(label: str, log_engine: Engine | None) -> Source | None:
    """Reopen the source a checkpoint names, when it can still be reached."""
    if label.startswith("db:"):
        return EventLogSource(log_engine) if log_engine is not None else None
    path = Path(label)
    return NdjsonSource(path) if path.is_file() else None
