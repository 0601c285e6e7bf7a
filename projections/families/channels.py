"""Channel mappings: mapped (again), updated, unmapped."""

from __future__ import annotations

from projections.batch import Pending
from projections.events import Event
from projections.families.common import (
    APPLIED,
    Handler,
    Outcome,
    apply_changes,
    entity,
    parent_key,
    set_status,
)

_MAPPED_FIELDS = ("kind", "address", "normalized")


def on_channel_mapped(state: Pending, event: Event) -> Outcome:
    """A channel address is mapped to a provider."""
    row = entity(state, event)
    for name in _MAPPED_FIELDS:
        setattr(row, name, event.fields[name])
    row.provider_id = _provider(state, event.fields["provider_id"])
    set_status(state, row, "mapped", event)
    return APPLIED


def on_channel_updated(state: Pending, event: Event) -> Outcome:
    """The channel's changed fields are applied."""
    row = entity(state, event)
    apply_changes(row, event)
    if "provider_id" in event.changes and (provider_id := row.provider_id) is not None:
        row.provider_id = _provider(state, provider_id)
    return APPLIED


def _provider(state: Pending, provider_id: str) -> str:
    return parent_key(state, "providers", "provider_id", provider_id)


def on_channel_unmapped(state: Pending, event: Event) -> Outcome:
    """The channel is unmapped; the row stays."""
    set_status(state, entity(state, event), "unmapped", event)
    return APPLIED


# Bump when these handlers change what they write: `status` then says a rebuild is needed.
VERSION = 1

HANDLERS: dict[str, Handler] = {
    "ChannelMapped": on_channel_mapped,
    "ChannelUpdated": on_channel_updated,
    "ChannelUnmapped": on_channel_unmapped,
}
