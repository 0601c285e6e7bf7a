"""Providers: configured, updated, enabled and disabled."""

from __future__ import annotations

from projections.batch import Pending
from projections.events import Event
from projections.families.common import APPLIED, Handler, Outcome, apply_changes, entity, set_status


def on_provider_configured(state: Pending, event: Event) -> Outcome:
    """A provider of a kind exists, configured."""
    row = entity(state, event)
    row.kind = event.fields["kind"]
    set_status(state, row, "configured", event)
    return APPLIED


def on_provider_updated(state: Pending, event: Event) -> Outcome:
    """The provider's changed fields are applied."""
    apply_changes(entity(state, event), event)
    return APPLIED


def on_provider_enabled(state: Pending, event: Event) -> Outcome:
    """The provider is enabled."""
    set_status(state, entity(state, event), "enabled", event)
    return APPLIED


def on_provider_disabled(state: Pending, event: Event) -> Outcome:
    """The provider is disabled, with the reason given."""
    set_status(state, entity(state, event), "disabled", event)
    return APPLIED


# Bump when these handlers change what they write: `status` then says a rebuild is needed.
VERSION = 1

HANDLERS: dict[str, Handler] = {
    "ProviderConfigured": on_provider_configured,
    "ProviderUpdated": on_provider_updated,
    "ProviderEnabled": on_provider_enabled,
    "ProviderDisabled": on_provider_disabled,
}
