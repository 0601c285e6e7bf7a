"""Customers: created enabled, renamed, enabled and disabled."""

from __future__ import annotations

from projections.batch import Pending
from projections.events import Event
from projections.families.common import APPLIED, Handler, Outcome, apply_changes, entity, set_status


def on_customer_created(state: Pending, event: Event) -> Outcome:
    """A customer exists, enabled, with its name."""
    row = entity(state, event)
    row.name = event.fields["name"]
    set_status(state, row, "enabled", event)
    return APPLIED


def on_customer_updated(state: Pending, event: Event) -> Outcome:
    """The customer's changed fields are applied."""
    apply_changes(entity(state, event), event)
    return APPLIED


def on_customer_enabled(state: Pending, event: Event) -> Outcome:
    """The customer is enabled, with the reason given."""
    set_status(state, entity(state, event), "enabled", event)
    return APPLIED


def on_customer_disabled(state: Pending, event: Event) -> Outcome:
    """The customer is disabled, with the reason given."""
    set_status(state, entity(state, event), "disabled", event)
    return APPLIED


# Bump when these handlers change what they write: `status` then says a rebuild is needed.
VERSION = 1

HANDLERS: dict[str, Handler] = {
    "CustomerCreated": on_customer_created,
    "CustomerUpdated": on_customer_updated,
    "CustomerEnabled": on_customer_enabled,
    "CustomerDisabled": on_customer_disabled,
}
