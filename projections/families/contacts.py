"""Contacts: created active, updated, deleted (the row stays), created again."""

from __future__ import annotations

from projections.batch import Pending
from projections.events import Event
from projections.families.common import (
    APPLIED,
    NOOP,
    Handler,
    Outcome,
    apply_changes,
    entity,
    illegal,
    set_status,
)


def on_contact_created(state: Pending, event: Event) -> Outcome:
    """A contact is active (again, if it was deleted), with its display name."""
    row = entity(state, event)
    if "display_name" in event.fields:
        row.display_name = event.fields["display_name"]
    set_status(state, row, "active", event)
    row.deleted_at = None
    return APPLIED


def on_contact_updated(state: Pending, event: Event) -> Outcome:
    """The contact's changed fields are applied; a deleted contact cannot change."""
    current = state.get("contacts", event.aggregate_id)
    if current is not None and current.status == "deleted":
        return illegal(event, "deleted")
    apply_changes(entity(state, event), event)
    return APPLIED


def on_contact_deleted(state: Pending, event: Event) -> Outcome:
    """The contact is marked deleted; deleting a deleted contact changes nothing."""
    current = state.get("contacts", event.aggregate_id)
    if current is not None and current.status == "deleted":
        return NOOP
    row = entity(state, event)
    set_status(state, row, "deleted", event)
    row.deleted_at = event.occurred_at
    return APPLIED


# Bump when these handlers change what they write: `status` then says a rebuild is needed.
VERSION = 1

HANDLERS: dict[str, Handler] = {
    "ContactCreated": on_contact_created,
    "ContactUpdated": on_contact_updated,
    "ContactDeleted": on_contact_deleted,
}
