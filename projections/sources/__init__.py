"""Where events come from: an NDJSON file or the database event log, read in positioned batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa


@dataclass(slots=True)
class SourceBatch:
    """Raw lines in read order with their positions, and the source state after the last one.

    `cursors` gives each line's place in read order when it is not simply its position
    (the database log reads in (transaction, position) order); `advanced` is False when
    nothing new was read.
    """

    lines: list[tuple[int, bytes]]
    position: int
    state: dict[str, Any] = field(default_factory=dict)
    cursors: list[tuple[int, int]] | None = None
    advanced: bool = True

    def cursor(self, index: int) -> tuple[int, int]:
        """The read-order cursor of line `index`."""
        if self.cursors is not None:
            return self.cursors[index]
        return (0, self.lines[index][0])


class Source(Protocol):
    """A log read forwards from a checkpoint in batches."""

    label: str
    kind: str

    def cursor(self, position: int, state: dict[str, Any]) -> tuple[int, int]:
        """Where a checkpoint stands in read order."""

    def verify(self, position: int, state: dict[str, Any]) -> None:
        """Raise SourceMismatchError when the source no longer matches a checkpoint."""

    def read(
        self,
        position: int,
        state: dict[str, Any],
        limit: int,
        connection: sa.Connection | None = None,
    ) -> SourceBatch:
        """Up to `limit` events after `position`; `connection` is the caller's transaction."""

    def head(self) -> int | None:
        """The last position available now, when the source can tell cheaply."""

    def backlog(self, position: int, state: dict[str, Any]) -> tuple[int, datetime | None]:
        """Events stored after a checkpoint, and the occurred_at of the newest one."""

    def close(self) -> None:
        """Release files or connections."""
