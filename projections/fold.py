"""The rules around every handler: duplicates, versions, owners, bookkeeping (SPEC §4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from projections.batch import Key, Pending, Row
from projections.config import VersionMode
from projections.events import Event
from projections.families import HANDLERS
from projections.families.common import APPLIED, NOOP, Outcome, Rejected

IdempotencyKey = tuple[str, str, str]
# A processed_events row, in its column order: event_id, projector, aggregate_id, key, position.
LedgerEntry = tuple[str, str, str, str | None, int]


@dataclass
class Counters:
    """What happened to the events of a run; `read` is the sum of the outcomes."""

    read: int = 0
    applied: int = 0
    noop: int = 0
    duplicate: int = 0
    stale: int = 0
    unknown: int = 0
    quarantined: int = 0
    rejected: int = 0
    anomalies: int = 0

    def add(self, other: Counters) -> None:
        """Add another set of counters to this one."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


def aggregate_keys(events: list[Event]) -> list[tuple[str, Key]]:
    """The rows handlers may read or change for these events, to load before folding."""
    keys: list[tuple[str, Key]] = [(event.family.table, event.aggregate_id) for event in events]
    for event in events:
        if event.name in ("ConversationParticipantAdded", "ConversationParticipantRemoved"):
            participant = (event.aggregate_id, event.fields["participant_id"])
            keys.append(("conversation_participants", participant))
        elif event.name == "ConversationCreated":
            for participant_id in event.fields.get("participant_ids", ()):
                keys.append(("conversation_participants", (event.aggregate_id, participant_id)))
    return keys


def idempotency_key(event: Event) -> IdempotencyKey | None:
    """The (projector, aggregate, key) triple that identifies a retried logical event."""
    if event.idempotency_key is None:
        return None
    return (event.family.name, event.aggregate_id, event.idempotency_key)


@dataclass
class Folder:
    """Folds the valid events of one batch into pending rows, ledger and anomalies."""

    state: Pending
    version_mode: VersionMode
    source: str
    seen_ids: set[str]
    seen_keys: set[IdempotencyKey]
    counters: Counters = field(default_factory=Counters)
    ledger: list[LedgerEntry] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, event: Event, key: IdempotencyKey | None) -> str:
        """Apply one event (`key`: its `idempotency_key`) and return its outcome name."""
        if event.event_id in self.seen_ids or (key is not None and key in self.seen_keys):
            self.counters.duplicate += 1
            return "duplicate"
        table = event.family.table
        rows = self.state.rows[table]
        row = rows[event.aggregate_id]
        last = row.version if row is not None else 0
        if self.version_mode is VersionMode.sequence:
            if event.version <= last:
                self.counters.stale += 1
                return "stale"
            if event.version > last + 1:
                self._anomaly(
                    event, "version_gap", f"expected version {last + 1}, got {event.version}"
                )

        outcome: Outcome | None = None
        if row is not None and event.family.id_field != "customer_id":
            outcome = self._owner_mismatch(event, row)
        if outcome is None:
            outcome = HANDLERS[event.name](self.state, event)

        self.seen_ids.add(event.event_id)
        if key is not None:
            self.seen_keys.add(key)
        self.ledger.append(
            (
                event.event_id,
                event.family.name,
                event.aggregate_id,
                event.idempotency_key,
                event.position,
            )
        )
        row = rows[event.aggregate_id]
        if outcome == APPLIED:
            assert row is not None
            row.version = event.version  # the row's bookkeeping columns (SPEC §5)
            row.updated_at = event.occurred_at
            row.last_event_id = event.event_id
            if row.created_at is None:
                row.created_at = event.occurred_at
            self.counters.applied += 1
            return "applied"
        if row is not None:
            row.version = event.version
            self.state.touch(table, event.aggregate_id)
        if outcome == NOOP:
            self.counters.noop += 1
            return "noop"
        assert isinstance(outcome, Rejected)
        self._anomaly(event, outcome.kind, outcome.detail)
        self.counters.rejected += 1
        return "rejected"

    def _owner_mismatch(self, event: Event, row: Row) -> Rejected | None:
        """A child aggregate's event that names another customer than the row's."""
        owner = row.customer_id
        claimed = event.fields["customer_id"]
        if owner is not None and claimed != owner:
            return Rejected(
                "customer_mismatch",
                f"{event.family.aggregate_type} {event.aggregate_id} belongs to {owner}, "
                f"not {claimed}",
            )
        return None

    def _anomaly(self, event: Event, kind: str, detail: str) -> None:
        self.counters.anomalies += 1
        self.anomalies.append(
            {
                "projector": event.family.name,
                "source": self.source,
                "position": event.position,
                "event_id": event.event_id,
                "event_name": event.name,
                "aggregate_type": event.family.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "kind": kind,
                "detail": detail,
                "occurred_at": event.occurred_at,
            }
        )


# Denormalised columns: (child table, reference, parent table, {child column: parent column}).
COPIES: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("channel_mappings", "provider_id", "providers", {"provider_kind": "kind"}),
    (
        "conversations",
        "channel_id",
        "channel_mappings",
        {"channel_kind": "kind", "channel_address": "normalized"},
    ),
    ("conversations", "contact_id", "contacts", {"contact_display_name": "display_name"}),
)
