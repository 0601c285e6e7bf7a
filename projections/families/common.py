"""What every family's handlers share: outcomes, the entity row, status and changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from projections.batch import Pending, Row
from projections.events import Event


@dataclass(frozen=True, slots=True)
class Rejected:
    """The event is valid but cannot apply; it becomes an anomaly of this kind."""

    kind: str
    detail: str


APPLIED: Final = "applied"
NOOP: Final = "noop"
Outcome = Literal["applied", "noop"] | Rejected
Handler = Callable[[Pending, Event], Outcome]


def entity(state: Pending, event: Event) -> Row:
    """The aggregate's pending row, created with what the event carries when missing."""
    row, created = state.upsert(event.family.table, event.aggregate_id)
    if created and "customer_id" in event.fields and event.family.id_field != "customer_id":
        row.customer_id = state.share(event.fields["customer_id"])
    return row


def parent_key(state: Pending, table: str, column: str, key: str) -> str:
    """`key` as the held row of `table` it names holds it (`column`: that row's id).

    A child row that refers to a parent (a conversation to its channel and contact, a
    channel to its provider) then holds the parent's own string, not the event's copy:
    two strings fewer per conversation a run holds. The event's copy when the parent
    is not held.
    """
    parent = state.rows[table].get(key)  # `get`: a row not held is not looked for
    return key if parent is None else getattr(parent, column)


def set_status(state: Pending, row: Row, status: str, event: Event) -> None:
    """Set a status and its reason (null when the event gives none)."""
    row.status = state.share(status)
    row.status_reason = state.share(event.fields.get("reason"))


def apply_changes(row: Row, event: Event) -> None:
    """Apply changed_fields: updatable columns change, other keys merge into attributes."""
    for column, value in event.changes.items():
        setattr(row, column, value)
    if event.extra:
        row.attributes = {**(row.attributes or {}), **event.extra}


def illegal(event: Event, status: str | None) -> Rejected:
    """An illegal transition of the event's aggregate from its current status."""
    return Rejected("illegal_transition", f"{event.name} on a {status} {event.family.name[:-1]}")
