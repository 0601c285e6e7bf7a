"""The event catalogue: five families, 21 event names and the rules of their fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PROVIDER_KINDS: Final = ("sms", "mms", "email", "voice", "voicemail")
CHANNEL_KINDS: Final = ("sms", "mms", "email")
CONVERSATION_STATUSES: Final = ("open", "closed", "archived")

RuleKind = Literal[
    "text",
    "nullable_text",
    "provider_kind",
    "channel_kind",
    "conversation_status",
    "participants",
    "changed_fields",
]


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one payload field of one event is checked."""

    kind: RuleKind
    required: bool = True


@dataclass(frozen=True, slots=True)
class Family:
    """One aggregate family: its projector, table and the columns changed_fields may update."""

    name: str
    aggregate_type: str
    id_field: str
    table: str
    updatable: frozenset[str]


CUSTOMERS: Final = Family("customers", "Customer", "customer_id", "customers", frozenset({"name"}))
CONTACTS: Final = Family(
    "contacts", "Contact", "contact_id", "contacts", frozenset({"display_name"})
)
PROVIDERS: Final = Family("providers", "Provider", "provider_id", "providers", frozenset({"kind"}))
CHANNELS: Final = Family(
    "channels",
    "Channel",
    "channel_id",
    "channel_mappings",
    frozenset({"kind", "address", "normalized", "provider_id"}),
)
CONVERSATIONS: Final = Family(
    "conversations", "Conversation", "conversation_id", "conversations", frozenset({"topic"})
)
FAMILIES: Final = (CUSTOMERS, CONTACTS, PROVIDERS, CHANNELS, CONVERSATIONS)
FAMILY_BY_NAME: Final = {f.name: f for f in FAMILIES}

_TEXT = FieldRule("text")
_OPTIONAL = FieldRule("nullable_text", required=False)
_CHANGED = FieldRule("changed_fields")

EVENT_FIELDS: Final[dict[str, dict[str, FieldRule]]] = {
    "CustomerCreated": {"customer_id": _TEXT, "name": _TEXT},
    "CustomerUpdated": {"customer_id": _TEXT, "changed_fields": _CHANGED},
    "CustomerEnabled": {"customer_id": _TEXT, "reason": _OPTIONAL},
    "CustomerDisabled": {"customer_id": _TEXT, "reason": _OPTIONAL},
    "ContactCreated": {"contact_id": _TEXT, "customer_id": _TEXT, "display_name": _OPTIONAL},
    "ContactUpdated": {"contact_id": _TEXT, "customer_id": _TEXT, "changed_fields": _CHANGED},
    "ContactDeleted": {"contact_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ProviderConfigured": {
        "provider_id": _TEXT,
        "customer_id": _TEXT,
        "kind": FieldRule("provider_kind"),
    },
    "ProviderUpdated": {"provider_id": _TEXT, "customer_id": _TEXT, "changed_fields": _CHANGED},
    "ProviderEnabled": {"provider_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ProviderDisabled": {"provider_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ChannelMapped": {
        "channel_id": _TEXT,
        "customer_id": _TEXT,
        "kind": FieldRule("channel_kind"),
        "address": _TEXT,
        "normalized": _TEXT,
        "provider_id": _TEXT,
    },
    "ChannelUpdated": {"channel_id": _TEXT, "customer_id": _TEXT, "changed_fields": _CHANGED},
    "ChannelUnmapped": {"channel_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ConversationCreated": {
        "conversation_id": _TEXT,
        "customer_id": _TEXT,
        "channel_id": _TEXT,
        "contact_id": _TEXT,
        "topic": _OPTIONAL,
        "status": FieldRule("conversation_status"),
        "participant_ids": FieldRule("participants", required=False),
    },
    "ConversationUpdated": {
        "conversation_id": _TEXT,
        "customer_id": _TEXT,
        "changed_fields": _CHANGED,
    },
    "ConversationClosed": {"conversation_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ConversationReopened": {"conversation_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
    "ConversationParticipantAdded": {
        "conversation_id": _TEXT,
        "customer_id": _TEXT,
        "participant_id": _TEXT,
    },
    "ConversationParticipantRemoved": {
        "conversation_id": _TEXT,
        "customer_id": _TEXT,
        "participant_id": _TEXT,
    },
    "ConversationArchived": {"conversation_id": _TEXT, "customer_id": _TEXT, "reason": _OPTIONAL},
}

EVENT_FAMILY: Final[dict[str, Family]] = {
    name: next(f for f in FAMILIES if name.startswith(f.aggregate_type)) for name in EVENT_FIELDS
}
EVENT_NAMES: Final = tuple(EVENT_FIELDS)

# The entity tables each projector owns (a rebuild of one projector replaces these).
PROJECTOR_TABLES: Final[dict[str, tuple[str, ...]]] = {
    "customers": ("customers",),
    "contacts": ("contacts",),
    "providers": ("providers",),
    "channels": ("channel_mappings",),
    "conversations": ("conversations", "conversation_participants"),
}
