"""The naive baseline: one ORM session and one commit per event, same rules as the product.

This is what a straightforward projector looks like when written with SQLModel/SQLAlchemy
ORM objects and no batching. It exists only to be measured side by side with the product
(`scripts/bench.py`), so it must do all the work the product does for the common path:

- every line is decoded and validated by the product's own `projections.events.decode`;
  invalid lines are written to `quarantined_events`, unknown names are skipped;
- duplicates are found through the product's `processed_events` table, by `event_id`
  and by (projector, aggregate, `idempotency_key`), queried per event;
- versions (mode `sequence` only): stale events are skipped, version gaps are applied
  and recorded in `event_anomalies`; owner mismatches (`customer_mismatch`) and illegal
  transitions are recorded and counted as the aggregate's last version;
- the entity upserts and status changes of the 21 events, `changed_fields` (updatable
  columns and the `attributes` merge), participants and `participant_count`;
- denormalised copies (`provider_kind`, `channel_kind`, `channel_address`,
  `contact_display_name`) done naively: a changed child queries its parents, a changed
  parent loads and updates every child that references it;
- the event's projector checkpoint row is updated in the same commit.

What it does not do: `--version-mode none`, `--strict`, `.gz` sources, resuming from a
checkpoint (it always starts at line 1 into empty tables), checkpoint fingerprints
(only the byte offset is stored), and writer locks. None of these is on the measured path.

Usage: python scripts/naive_projector.py LOG --database-url URL [--limit N] [--reset]
Prints one JSON object: counters, events read, and `seconds` (the projection loop only,
without interpreter start-up and migrations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

try:
    import projections  # noqa: F401
except ImportError:  # run from a clone where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from projections.config import normalise_url
from projections.db import create_engine
from projections.events import Event, Invalid, Unknown, decode, utc_now
from projections.migrate import upgrade
from projections.schema import FAMILIES
from projections.tables import (
    ChannelMapping,
    Contact,
    Conversation,
    ConversationParticipant,
    Customer,
    EventAnomaly,
    ProcessedEvent,
    ProjectionCheckpoint,
    Provider,
    QuarantinedEvent,
)

MODELS: dict[str, type[SQLModel]] = {
    "customers": Customer,
    "contacts": Contact,
    "providers": Provider,
    "channel_mappings": ChannelMapping,
    "conversations": Conversation,
}
RESET_TABLES = (
    "customers",
    "contacts",
    "providers",
    "channel_mappings",
    "conversations",
    "conversation_participants",
    "processed_events",
    "event_anomalies",
    "quarantined_events",
    "projection_checkpoints",
)


class Outcome:
    """What the handler did: applied, a no-op, or rejected as an anomaly."""

    APPLIED = "applied"
    NOOP = "noop"


class Rejected:
    """A valid event that cannot apply."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail


def illegal(event: Event, status: str | None) -> Rejected:
    """The same wording as the product's families.common.illegal."""
    return Rejected("illegal_transition", f"{event.name} on a {status} {event.family.name[:-1]}")


class NaiveProjector:
    """Applies one event per session and commit."""

    def __init__(self, engine: sa.Engine, source: str) -> None:
        self.engine = engine
        self.source = source
        # One long-lived session, committed after every event. expire_on_commit=False keeps
        # loaded objects (the checkpoints) usable after a commit: the baseline is naive, not
        # needlessly slow.
        self.session = Session(engine, expire_on_commit=False)
        self.counters = dict.fromkeys(
            (
                "read",
                "applied",
                "noop",
                "duplicate",
                "stale",
                "unknown",
                "quarantined",
                "rejected",
                "anomalies",
            ),
            0,
        )

    # -- one line, one transaction -------------------------------------------------------

    def handle(self, position: int, line: bytes, offset: int) -> None:
        """Decode, apply and commit one line."""
        item = decode(position, line)
        self.counters["read"] += 1
        session = self.session
        try:
            if isinstance(item, Invalid):
                self.counters["quarantined"] += 1
                session.add(
                    QuarantinedEvent(
                        source=self.source,
                        position=item.position,
                        event_id=item.event_id,
                        event_name=item.event_name,
                        reason=item.reason,
                        message=item.message,
                        raw=item.raw,
                        quarantined_at=utc_now(),
                    )
                )
                for family in FAMILIES:
                    self._checkpoint(session, family.name, position, offset, None)
            elif isinstance(item, Unknown):
                self.counters["unknown"] += 1
                for family in FAMILIES:
                    self._checkpoint(session, family.name, position, offset, None)
            else:
                self._apply(session, item)
                self._checkpoint(session, item.family.name, position, offset, item)
            session.commit()
        except BaseException:
            session.rollback()
            raise

    def close(self) -> None:
        """Close the session."""
        self.session.close()

    def _checkpoint(
        self, session: Session, projector: str, position: int, offset: int, event: Event | None
    ) -> None:
        checkpoint = session.get(ProjectionCheckpoint, projector)
        if checkpoint is None:
            checkpoint = ProjectionCheckpoint(projector=projector, source=self.source)
            session.add(checkpoint)
        checkpoint.position = position
        checkpoint.source_state = {"kind": "ndjson", "offset": offset}
        checkpoint.updated_at = utc_now()
        if event is not None:
            checkpoint.last_event_id = event.event_id
            if (
                checkpoint.last_occurred_at is None
                or event.occurred_at > checkpoint.last_occurred_at
            ):
                checkpoint.last_occurred_at = event.occurred_at

    # -- the rules around every handler ---------------------------------------------------

    def _apply(self, session: Session, event: Event) -> None:
        family = event.family
        if session.get(ProcessedEvent, event.event_id) is not None:
            self.counters["duplicate"] += 1
            return
        if event.idempotency_key is not None:
            retried = session.exec(
                select(ProcessedEvent.event_id).where(
                    ProcessedEvent.projector == family.name,
                    ProcessedEvent.aggregate_id == event.aggregate_id,
                    ProcessedEvent.idempotency_key == event.idempotency_key,
                )
            ).first()
            if retried is not None:
                self.counters["duplicate"] += 1
                return
        model = MODELS[family.table]
        row: Any = session.get(model, event.aggregate_id)
        last = row.version if row is not None else 0
        if event.version <= last:
            self.counters["stale"] += 1
            return
        if event.version > last + 1:
            self._anomaly(
                session, event, "version_gap", f"expected version {last + 1}, got {event.version}"
            )

        before = self._copied_values(family.table, row)
        outcome: str | Rejected | None = None
        if row is not None and family.id_field != "customer_id":
            owner, claimed = row.customer_id, event.fields["customer_id"]
            if owner is not None and claimed != owner:
                outcome = Rejected(
                    "customer_mismatch",
                    f"{family.aggregate_type} {event.aggregate_id} belongs to {owner}, "
                    f"not {claimed}",
                )
        if outcome is None:
            outcome = getattr(self, "on_" + event.name)(session, event, row)

        session.add(
            ProcessedEvent(
                event_id=event.event_id,
                projector=family.name,
                aggregate_id=event.aggregate_id,
                idempotency_key=event.idempotency_key,
                position=event.position,
            )
        )
        session.flush()  # a row the handler created joins the identity map
        row = session.get(model, event.aggregate_id)
        if outcome == Outcome.APPLIED:
            row.version = event.version
            row.updated_at = event.occurred_at
            row.last_event_id = event.event_id
            if row.created_at is None:
                row.created_at = event.occurred_at
            self.counters["applied"] += 1
        else:
            if row is not None:
                row.version = event.version
            if outcome == Outcome.NOOP:
                self.counters["noop"] += 1
            else:
                assert isinstance(outcome, Rejected)
                self._anomaly(session, event, outcome.kind, outcome.detail)
                self.counters["rejected"] += 1
        if row is not None:
            self._copy_from_parents(session, family.table, row)
            self._copy_to_children(session, family.table, row, before)

    def _anomaly(self, session: Session, event: Event, kind: str, detail: str) -> None:
        self.counters["anomalies"] += 1
        session.add(
            EventAnomaly(
                projector=event.family.name,
                source=self.source,
                position=event.position,
                event_id=event.event_id,
                event_name=event.name,
                aggregate_type=event.family.aggregate_type,
                aggregate_id=event.aggregate_id,
                kind=kind,
                detail=detail,
                occurred_at=event.occurred_at,
            )
        )

    # -- denormalised copies, the naive way ---------------------------------------------------

    @staticmethod
    def _copied_values(table: str, row: Any) -> tuple[Any, ...] | None:
        if row is None:
            return None
        if table == "providers":
            return (row.kind,)
        if table == "channel_mappings":
            return (row.kind, row.normalized)
        if table == "contacts":
            return (row.display_name,)
        return ()

    def _copy_from_parents(self, session: Session, table: str, row: Any) -> None:
        if table == "channel_mappings":
            provider = session.get(Provider, row.provider_id) if row.provider_id else None
            row.provider_kind = provider.kind if provider is not None else None
        elif table == "conversations":
            channel = session.get(ChannelMapping, row.channel_id) if row.channel_id else None
            row.channel_kind = channel.kind if channel is not None else None
            row.channel_address = channel.normalized if channel is not None else None
            contact = session.get(Contact, row.contact_id) if row.contact_id else None
            row.contact_display_name = contact.display_name if contact is not None else None

    def _copy_to_children(
        self, session: Session, table: str, row: Any, before: tuple[Any, ...] | None
    ) -> None:
        if before is not None and before == self._copied_values(table, row):
            return
        if table == "providers":
            for child in session.exec(
                select(ChannelMapping).where(ChannelMapping.provider_id == row.provider_id)
            ):
                child.provider_kind = row.kind
        elif table == "channel_mappings":
            for conversation in session.exec(
                select(Conversation).where(Conversation.channel_id == row.channel_id)
            ):
                conversation.channel_kind = row.kind
                conversation.channel_address = row.normalized
        elif table == "contacts":
            for conversation in session.exec(
                select(Conversation).where(Conversation.contact_id == row.contact_id)
            ):
                conversation.contact_display_name = row.display_name

    # -- entities ---------------------------------------------------------------------------

    def _entity(self, session: Session, event: Event, row: Any) -> Any:
        """The aggregate's row, created with what the event carries when missing."""
        if row is not None:
            return row
        model = MODELS[event.family.table]
        row = model(**{event.family.id_field: event.aggregate_id})
        if "customer_id" in event.fields and event.family.id_field != "customer_id":
            row.customer_id = event.fields["customer_id"]
        session.add(row)
        return row

    @staticmethod
    def _status(row: Any, status: str, event: Event) -> None:
        row.status = status
        row.status_reason = event.fields.get("reason")

    @staticmethod
    def _changes(row: Any, event: Event) -> None:
        for column, value in event.changes.items():
            setattr(row, column, value)
        if event.extra:
            row.attributes = {**(row.attributes or {}), **event.extra}

    # customers
    def on_CustomerCreated(self, session: Session, event: Event, row: Any) -> str:
        row = self._entity(session, event, row)
        row.name = event.fields["name"]
        self._status(row, "enabled", event)
        return Outcome.APPLIED

    def on_CustomerUpdated(self, session: Session, event: Event, row: Any) -> str:
        self._changes(self._entity(session, event, row), event)
        return Outcome.APPLIED

    def on_CustomerEnabled(self, session: Session, event: Event, row: Any) -> str:
        self._status(self._entity(session, event, row), "enabled", event)
        return Outcome.APPLIED

    def on_CustomerDisabled(self, session: Session, event: Event, row: Any) -> str:
        self._status(self._entity(session, event, row), "disabled", event)
        return Outcome.APPLIED

    # contacts
    def on_ContactCreated(self, session: Session, event: Event, row: Any) -> str:
        row = self._entity(session, event, row)
        if "display_name" in event.fields:
            row.display_name = event.fields["display_name"]
        self._status(row, "active", event)
        row.deleted_at = None
        return Outcome.APPLIED

    def on_ContactUpdated(self, session: Session, event: Event, row: Any) -> str | Rejected:
        if row is not None and row.status == "deleted":
            return illegal(event, "deleted")
        self._changes(self._entity(session, event, row), event)
        return Outcome.APPLIED

    def on_ContactDeleted(self, session: Session, event: Event, row: Any) -> str:
        if row is not None and row.status == "deleted":
            return Outcome.NOOP
        row = self._entity(session, event, row)
        self._status(row, "deleted", event)
        row.deleted_at = event.occurred_at
        return Outcome.APPLIED

    # providers
    def on_ProviderConfigured(self, session: Session, event: Event, row: Any) -> str:
        row = self._entity(session, event, row)
        row.kind = event.fields["kind"]
        self._status(row, "configured", event)
        return Outcome.APPLIED

    def on_ProviderUpdated(self, session: Session, event: Event, row: Any) -> str:
        self._changes(self._entity(session, event, row), event)
        return Outcome.APPLIED

    def on_ProviderEnabled(self, session: Session, event: Event, row: Any) -> str:
        self._status(self._entity(session, event, row), "enabled", event)
        return Outcome.APPLIED

    def on_ProviderDisabled(self, session: Session, event: Event, row: Any) -> str:
        self._status(self._entity(session, event, row), "disabled", event)
        return Outcome.APPLIED

    # channels
    def on_ChannelMapped(self, session: Session, event: Event, row: Any) -> str:
        row = self._entity(session, event, row)
        for name in ("kind", "address", "normalized", "provider_id"):
            setattr(row, name, event.fields[name])
        self._status(row, "mapped", event)
        return Outcome.APPLIED

    def on_ChannelUpdated(self, session: Session, event: Event, row: Any) -> str:
        self._changes(self._entity(session, event, row), event)
        return Outcome.APPLIED

    def on_ChannelUnmapped(self, session: Session, event: Event, row: Any) -> str:
        self._status(self._entity(session, event, row), "unmapped", event)
        return Outcome.APPLIED

    # conversations
    @staticmethod
    def _archived(event: Event, row: Any) -> Rejected | None:
        if row is not None and row.status == "archived":
            return illegal(event, "archived")
        return None

    def on_ConversationCreated(self, session: Session, event: Event, row: Any) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        row = self._entity(session, event, row)
        row.channel_id = event.fields["channel_id"]
        row.contact_id = event.fields["contact_id"]
        if "topic" in event.fields:
            row.topic = event.fields["topic"]
        status = event.fields["status"]
        self._status(row, status, event)
        row.closed_at = event.occurred_at if status == "closed" else None
        row.archived_at = event.occurred_at if status == "archived" else None
        for participant_id in dict.fromkeys(event.fields.get("participant_ids", ())):
            self._add(session, row, event, participant_id)
        return Outcome.APPLIED

    def on_ConversationUpdated(self, session: Session, event: Event, row: Any) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        self._changes(self._entity(session, event, row), event)
        return Outcome.APPLIED

    def on_ConversationClosed(self, session: Session, event: Event, row: Any) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        if row is not None and row.status == "closed":
            return Outcome.NOOP
        row = self._entity(session, event, row)
        self._status(row, "closed", event)
        row.closed_at = event.occurred_at
        return Outcome.APPLIED

    def on_ConversationReopened(self, session: Session, event: Event, row: Any) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        if row is not None and row.status == "open":
            return Outcome.NOOP
        row = self._entity(session, event, row)
        self._status(row, "open", event)
        row.closed_at = None
        return Outcome.APPLIED

    def on_ConversationArchived(self, session: Session, event: Event, row: Any) -> str:
        if row is not None and row.status == "archived":
            return Outcome.NOOP
        row = self._entity(session, event, row)
        self._status(row, "archived", event)
        row.archived_at = event.occurred_at
        return Outcome.APPLIED

    def on_ConversationParticipantAdded(
        self, session: Session, event: Event, row: Any
    ) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        row = self._entity(session, event, row)
        self._add(session, row, event, event.fields["participant_id"])
        return Outcome.APPLIED

    def on_ConversationParticipantRemoved(
        self, session: Session, event: Event, row: Any
    ) -> str | Rejected:
        if (refused := self._archived(event, row)) is not None:
            return refused
        row = self._entity(session, event, row)
        participant = self._participant(session, row, event, event.fields["participant_id"])
        if participant.active:
            participant.active = False
            row.participant_count -= 1
        participant.removed_at = event.occurred_at
        return Outcome.APPLIED

    def _add(self, session: Session, conversation: Any, event: Event, participant_id: str) -> None:
        participant = self._participant(session, conversation, event, participant_id)
        if not participant.active:
            participant.active = True
            participant.added_at = event.occurred_at
            participant.removed_at = None
            conversation.participant_count += 1

    def _participant(
        self, session: Session, conversation: Any, event: Event, participant_id: str
    ) -> ConversationParticipant:
        participant = session.get(ConversationParticipant, (event.aggregate_id, participant_id))
        if participant is None:
            participant = ConversationParticipant(
                conversation_id=event.aggregate_id, participant_id=participant_id, active=False
            )
            session.add(participant)
        participant.customer_id = conversation.customer_id
        participant.updated_at = event.occurred_at
        participant.last_event_id = event.event_id
        return participant


def lines(path: Path, limit: int | None) -> Any:
    """(position, line without newline and trailing CR, byte offset after it), blanks skipped."""
    offset = 0
    taken = 0
    with path.open("rb") as handle:
        for position, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # an incomplete last line is not read, as in the product
            offset += len(raw)
            line = raw[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip():
                continue
            if limit is not None and taken >= limit:
                return
            taken += 1
            yield position, line, offset


def main(argv: list[str] | None = None) -> int:
    """Project LOG into the database, one commit per event; print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="an NDJSON log")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--limit", type=int, help="project only the first N non-blank lines")
    parser.add_argument("--reset", action="store_true", help="empty the read-model tables first")
    args = parser.parse_args(argv)

    engine = create_engine(normalise_url(args.database_url))
    upgrade(engine)
    if args.reset:
        with engine.begin() as connection:
            for name in RESET_TABLES:
                connection.execute(sa.text(f"DELETE FROM {name}"))
    projector = NaiveProjector(engine, str(args.log.resolve()))
    started = time.perf_counter()
    for position, line, offset in lines(args.log, args.limit):
        projector.handle(position, line, offset)
    seconds = time.perf_counter() - started
    projector.close()
    engine.dispose()
    summary: dict[str, float | None] = {**projector.counters, "seconds": seconds}
    summary["events_per_second"] = projector.counters["read"] / seconds if seconds else None
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
