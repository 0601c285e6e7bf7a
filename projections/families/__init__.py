"""The five projectors' handlers, merged into one route by event name."""

from __future__ import annotations

from projections.families import channels, contacts, conversations, customers, providers
from projections.families.common import Handler
from projections.schema import EVENT_NAMES


def _merge(*routes: dict[str, Handler]) -> dict[str, Handler]:
    merged: dict[str, Handler] = {}
    for route in routes:
        for name, handler in route.items():
            if name in merged:
                raise RuntimeError(f"event {name} is claimed by two handlers")
            merged[name] = handler
    missing = set(EVENT_NAMES) - set(merged)
    if missing:
        raise RuntimeError(f"events without a handler: {sorted(missing)}")
    return merged


HANDLERS: dict[str, Handler] = _merge(
    customers.HANDLERS,
    contacts.HANDLERS,
    providers.HANDLERS,
    channels.HANDLERS,
    conversations.HANDLERS,
)
