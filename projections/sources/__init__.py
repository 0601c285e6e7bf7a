"""Where events come from: an NDJSON file or the database event log, read in positioned batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class SourceBatch:
    """Raw lines in log order with their positions, and the source state after the last one."""

    lines: list[tuple[int, bytes]]
    position: int
    state: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A log read forwards from a checkpoint in batches."""

    label: str
    kind: str

    def verify(self, position: int, state: dict[str, Any]) -> None:
        """Raise SourceMismatchError when the source no longer matches a checkpoint."""

    def read(self, position: int, state: dict[str, Any], limit: int) -> SourceBatch:
        """Up to `limit` events after `position`; an empty batch when caught up."""

    def head(self) -> int | None:
        """The last position available now, when the source can tell cheaply."""

    def close(self) -> None:
        """Release files or connections."""
