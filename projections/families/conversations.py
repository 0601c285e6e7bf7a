"""Conversations: open, closed, reopened, archived (final), and their participants."""

from __future__ import annotations

from projections.batch import Pending, Row
from projections.events import Event
from projections.families.common import (
    APPLIED,
    NOOP,
    Handler,
    Outcome,
    Rejected,
    apply_changes,
    entity,
    illegal,
    parent_key,
    set_status,
)

_PARTICIPANTS = "conversation_participants"


def _archived(state: Pending, event: Event) -> Rejected | None:
    current = state.get("conversations", event.aggregate_id)
    if current is not None and current.status == "archived":
        return illegal(event, "archived")
    return None


def on_conversation_created(state: Pending, event: Event) -> Outcome:
    """A conversation exists with its channel, contact, status and first participants."""
    if (refused := _archived(state, event)) is not None:
        return refused
    row = entity(state, event)
    row.channel_id = parent_key(state, "channel_mappings", "channel_id", event.fields["channel_id"])
    row.contact_id = parent_key(state, "contacts", "contact_id", event.fields["contact_id"])
    if "topic" in event.fields:
        row.topic = event.fields["topic"]
    status = event.fields["status"]
    set_status(state, row, status, event)
    row.closed_at = event.occurred_at if status == "closed" else None
    row.archived_at = event.occurred_at if status == "archived" else None
    for participant_id in dict.fromkeys(event.fields.get("participant_ids", ())):
        _add(state, row, event, participant_id)
    return APPLIED


def on_conversation_updated(state: Pending, event: Event) -> Outcome:
    """The conversation's changed fields are applied."""
    if (refused := _archived(state, event)) is not None:
        return refused
    apply_changes(entity(state, event), event)
    return APPLIED


def on_conversation_closed(state: Pending, event: Event) -> Outcome:
    """An open conversation is closed; closing a closed one changes nothing."""
    if (refused := _archived(state, event)) is not None:
        return refused
    current = state.get("conversations", event.aggregate_id)
    if current is not None and current.status == "closed":
        return NOOP
    row = entity(state, event)
    set_status(state, row, "closed", event)
    row.closed_at = event.occurred_at
    return APPLIED


def on_conversation_reopened(state: Pending, event: Event) -> Outcome:
    """A closed conversation is open again; reopening an open one changes nothing."""
    if (refused := _archived(state, event)) is not None:
        return refused
    current = state.get("conversations", event.aggregate_id)
    if current is not None and current.status == "open":
        return NOOP
    row = entity(state, event)
    set_status(state, row, "open", event)
    row.closed_at = None
    return APPLIED


def on_conversation_archived(state: Pending, event: Event) -> Outcome:
    """The conversation is archived for good; archiving it again changes nothing."""
    current = state.get("conversations", event.aggregate_id)
    if current is not None and current.status == "archived":
        return NOOP
    row = entity(state, event)
    set_status(state, row, "archived", event)
    row.archived_at = event.occurred_at
    return APPLIED


def on_participant_added(state: Pending, event: Event) -> Outcome:
    """A participant joins (or rejoins) the conversation."""
    if (refused := _archived(state, event)) is not None:
        return refused
    _add(state, entity(state, event), event, event.fields["participant_id"])
    return APPLIED


def on_participant_removed(state: Pending, event: Event) -> Outcome:
    """A participant leaves; the row stays, inactive."""
    if (refused := _archived(state, event)) is not None:
        return refused
    conversation = entity(state, event)
    participant = _participant(state, conversation, event, event.fields["participant_id"])
    if participant.active:
        participant.active = False
        conversation.participant_count -= 1
    participant.removed_at = event.occurred_at
    return APPLIED


def _add(state: Pending, conversation: Row, event: Event, participant_id: str) -> None:
    participant = _participant(state, conversation, event, participant_id)
    if not participant.active:
        participant.active = True
        participant.added_at = event.occurred_at
        participant.removed_at = None
        conversation.participant_count += 1


def _participant(state: Pending, conversation: Row, event: Event, participant_id: str) -> Row:
    # The key reuses the conversation row's id string: a run holds every participant
    # row, and each would otherwise carry a copy of its own.
    key = (conversation.conversation_id, participant_id)
    row, _ = state.upsert(_PARTICIPANTS, key)
    row.customer_id = conversation.customer_id
    row.updated_at = event.occurred_at
    row.last_event_id = event.event_id
    return row


# Bump when these handlers change what they write: `status` then says a rebuild is needed.
VERSION = 1

HANDLERS: dict[str, Handler] = {
    "ConversationCreated": on_conversation_created,
    "ConversationUpdated": on_conversation_updated,
    "ConversationClosed": on_conversation_closed,
    "ConversationReopened": on_conversation_reopened,
    "ConversationArchived": on_conversation_archived,
    "ConversationParticipantAdded": on_participant_added,
    "ConversationParticipantRemoved": on_participant_removed,
}
