"""SQLModel tables: the one source of the schema; migrations are generated from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = SQLModel.metadata

# SQLite keeps timestamps as text; this format sorts, compares and reads as UTC.
_SQLITE_DATETIME = sqlite.DATETIME(  # type: ignore[no-untyped-call]
    storage_format=(
        "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d"
        ".%(microsecond)06d+00:00"
    ),
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)(?:\.(\d+))?",
)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases (SQLite would drop the offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        """Use a UTC text format on SQLite and timestamptz elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLITE_DATETIME)
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store every timestamp in UTC, naive on SQLite."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC datetimes whatever the database gave back."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _json_object(comment: str | None = None) -> Any:
    return Field(
        default_factory=dict,
        sa_type=JsonDocument,
        nullable=False,
        sa_column_kwargs={"comment": comment},
    )


def _timestamp(nullable: bool = True, comment: str | None = None) -> Any:
    return Field(
        default=None, sa_type=UtcDateTime, nullable=nullable, sa_column_kwargs={"comment": comment}
    )


def _about(comment: str, **options: Any) -> Any:
    """A Field whose column carries a COMMENT for SQL users (see docs/tables.md)."""
    return Field(**options, sa_column_kwargs={"comment": comment})


_REDACTED = " (a keyed hash h:... when run with --redact-pii)"


class Entity(SQLModel):
    """Columns every entity table carries (SPEC §5)."""

    version: int = _about(
        "Last counted version of the aggregate: applied events, no-ops and anomalies move it",
        default=0,
        sa_type=sa.BigInteger,
        nullable=False,
    )
    created_at: datetime | None = _timestamp(
        comment="occurred_at (UTC) of the first applied event of the aggregate"
    )
    updated_at: datetime | None = _timestamp(
        comment="occurred_at (UTC) of the last applied event of the aggregate"
    )
    last_event_id: str | None = _about(
        "event_id of the last applied event of the aggregate", default=None
    )
    attributes: dict[str, Any] = _json_object(
        "JSON object: changed_fields keys of ...Updated events that are not columns, merged"
    )


class Customer(Entity, table=True):
    """One customer (tenant) of the platform."""

    __tablename__ = "customers"
    __table_args__ = {
        "comment": "One customer (tenant): CustomerCreated, CustomerUpdated, CustomerEnabled, "
        "CustomerDisabled"
    }
    customer_id: str = _about("Customer id: aggregate_id of Customer events", primary_key=True)
    name: str | None = _about(
        "Name: CustomerCreated, CustomerUpdated changed_fields.name", default=None
    )
    status: str | None = _about(
        "enabled (CustomerCreated, CustomerEnabled) or disabled (CustomerDisabled)",
        default=None,
        index=True,
    )
    status_reason: str | None = _about(
        "reason of the last status-setting event, NULL when it gave none", default=None
    )


class Contact(Entity, table=True):
    """One contact of a customer; deleted contacts stay with status `deleted`."""

    __tablename__ = "contacts"
    __table_args__ = {
        "comment": "One contact of a customer: ContactCreated, ContactUpdated, ContactDeleted; "
        "deleted contacts stay with status deleted"
    }
    contact_id: str = _about("Contact id: aggregate_id of Contact events", primary_key=True)
    customer_id: str | None = _about(
        "Owning customer, from the contact's first event; it never changes",
        default=None,
        index=True,
    )
    display_name: str | None = _about(
        "Display name: ContactCreated, ContactUpdated changed_fields.display_name" + _REDACTED,
        default=None,
    )
    status: str | None = _about(
        "active (ContactCreated) or deleted (ContactDeleted)", default=None, index=True
    )
    status_reason: str | None = _about(
        "reason of the last ContactCreated or ContactDeleted", default=None
    )
    deleted_at: datetime | None = _timestamp(
        comment="occurred_at of ContactDeleted; cleared when ContactCreated revives the contact"
    )


class Provider(Entity, table=True):
    """One messaging provider configured by a customer."""

    __tablename__ = "providers"
    __table_args__ = {
        "comment": "One messaging provider of a customer: ProviderConfigured, ProviderUpdated, "
        "ProviderEnabled, ProviderDisabled"
    }
    provider_id: str = _about("Provider id: aggregate_id of Provider events", primary_key=True)
    customer_id: str | None = _about(
        "Owning customer, from the provider's first event; it never changes",
        default=None,
        index=True,
    )
    kind: str | None = _about(
        "sms, mms, email, voice or voicemail: ProviderConfigured, ProviderUpdated "
        "changed_fields.kind",
        default=None,
    )
    status: str | None = _about(
        "configured (ProviderConfigured), enabled (ProviderEnabled), disabled (ProviderDisabled)",
        default=None,
        index=True,
    )
    status_reason: str | None = _about(
        "reason of the last status-setting event, NULL when it gave none", default=None
    )


class ChannelMapping(Entity, table=True):
    """One channel address mapped to a provider, with the provider's kind copied in."""

    __tablename__ = "channel_mappings"
    __table_args__ = {
        "comment": "One channel address of a customer mapped to a provider: ChannelMapped, "
        "ChannelUpdated, ChannelUnmapped"
    }
    channel_id: str = _about("Channel id: aggregate_id of Channel events", primary_key=True)
    customer_id: str | None = _about(
        "Owning customer, from the channel's first event; it never changes",
        default=None,
        index=True,
    )
    kind: str | None = _about(
        "sms, mms or email: ChannelMapped, ChannelUpdated changed_fields.kind", default=None
    )
    address: str | None = _about(
        "Address as sent: ChannelMapped, ChannelUpdated changed_fields.address" + _REDACTED,
        default=None,
    )
    normalized: str | None = _about(
        "Normalised address, the lookup key: ChannelMapped, ChannelUpdated "
        "changed_fields.normalized" + _REDACTED,
        default=None,
        index=True,
    )
    provider_id: str | None = _about(
        "Provider the channel maps to: ChannelMapped, ChannelUpdated changed_fields.provider_id",
        default=None,
        index=True,
    )
    provider_kind: str | None = _about(
        "Copy of providers.kind of provider_id (ProviderConfigured, ProviderUpdated); "
        "NULL while that provider does not exist",
        default=None,
    )
    status: str | None = _about(
        "mapped (ChannelMapped) or unmapped (ChannelUnmapped)", default=None, index=True
    )
    status_reason: str | None = _about(
        "reason of the last ChannelMapped or ChannelUnmapped", default=None
    )


class Conversation(Entity, table=True):
    """One conversation with its channel and contact details copied in."""

    __tablename__ = "conversations"
    __table_args__ = (
        sa.Index(None, "customer_id", "status"),
        {
            "comment": "One conversation of a customer on a channel with a contact: "
            "Conversation* events; channel and contact details copied in"
        },
    )
    conversation_id: str = _about(
        "Conversation id: aggregate_id of Conversation events", primary_key=True
    )
    customer_id: str | None = _about(
        "Owning customer, from the conversation's first event; it never changes",
        default=None,
        index=True,
    )
    channel_id: str | None = _about(
        "Channel of the conversation: ConversationCreated", default=None, index=True
    )
    contact_id: str | None = _about(
        "Contact of the conversation: ConversationCreated", default=None, index=True
    )
    topic: str | None = _about(
        "Topic: ConversationCreated, ConversationUpdated changed_fields.topic", default=None
    )
    status: str | None = _about(
        "open, closed or archived: ConversationCreated, ConversationClosed, "
        "ConversationReopened, ConversationArchived (final)",
        default=None,
        index=True,
    )
    status_reason: str | None = _about(
        "reason of the last status-setting event, NULL when it gave none", default=None
    )
    closed_at: datetime | None = _timestamp(
        comment="occurred_at of ConversationClosed (or of ConversationCreated with status "
        "closed); cleared by ConversationReopened"
    )
    archived_at: datetime | None = _timestamp(
        comment="occurred_at of ConversationArchived (or of ConversationCreated with status "
        "archived)"
    )
    participant_count: int = _about(
        "Active participants: ConversationCreated participant_ids, "
        "ConversationParticipantAdded, ConversationParticipantRemoved",
        default=0,
        nullable=False,
    )
    channel_kind: str | None = _about(
        "Copy of channel_mappings.kind of channel_id; NULL while that channel does not exist",
        default=None,
    )
    channel_address: str | None = _about(
        "Copy of channel_mappings.normalized of channel_id; NULL while that channel does not "
        "exist" + _REDACTED,
        default=None,
        index=True,
    )
    contact_display_name: str | None = _about(
        "Copy of contacts.display_name of contact_id; NULL while that contact does not exist"
        + _REDACTED,
        default=None,
    )


class ConversationParticipant(SQLModel, table=True):
    """One participant of one conversation; removal keeps the row inactive."""

    __tablename__ = "conversation_participants"
    __table_args__ = {
        "comment": "One participant of one conversation: ConversationCreated participant_ids, "
        "ConversationParticipantAdded, ConversationParticipantRemoved"
    }
    conversation_id: str = _about("The conversation", primary_key=True)
    participant_id: str = _about(
        "Participant id: participant_ids of ConversationCreated, participant_id of "
        "ConversationParticipantAdded/Removed",
        primary_key=True,
        index=True,
    )
    customer_id: str | None = _about(
        "Customer of the conversation (copied from conversations.customer_id)",
        default=None,
        index=True,
    )
    active: bool = _about(
        "true after an add, false after ConversationParticipantRemoved (the row stays)",
        default=True,
        nullable=False,
    )
    added_at: datetime | None = _timestamp(
        comment="occurred_at of the add that made the participant active"
    )
    removed_at: datetime | None = _timestamp(
        comment="occurred_at of ConversationParticipantRemoved; cleared by a later add"
    )
    updated_at: datetime | None = _timestamp(
        comment="occurred_at of the last event that added or removed the participant"
    )
    last_event_id: str | None = _about(
        "event_id of the last event that added or removed the participant", default=None
    )


class QuarantinedEvent(SQLModel, table=True):
    """A line that broke a rule of the contract: kept raw with its reason, never applied."""

    __tablename__ = "quarantined_events"
    __table_args__ = (
        sa.UniqueConstraint("source", "position"),
        {"comment": "Lines that broke a rule of the contract, kept with a reason; never applied"},
    )
    id: int | None = _about("Row id", default=None, primary_key=True)
    source: str = _about("The source the line came from (file path or db)", nullable=False)
    position: int = _about(
        "Position of the line in its source (line number, or event_log.position)",
        sa_type=sa.BigInteger,
        nullable=False,
    )
    event_id: str | None = _about("event_id, when one could be read", default=None, index=True)
    event_name: str | None = _about("event_name, when one could be read", default=None)
    reason: str = _about(
        "Reason code (docs/semantics.md), e.g. invalid_json, missing_field",
        nullable=False,
        index=True,
    )
    message: str = _about("What was wrong, for a human", nullable=False)
    raw: str = _about(
        "The raw line, made storable (NUL escaped); only a keyed hash under --redact-pii",
        sa_type=sa.Text,
        nullable=False,
    )
    quarantined_at: datetime = _timestamp(
        nullable=False, comment="When the line was quarantined (wall clock)"
    )


class EventAnomaly(SQLModel, table=True):
    """A valid event that could not apply as sent (illegal transition, owner mismatch, gap)."""

    __tablename__ = "event_anomalies"
    __table_args__ = {
        "comment": "Valid events that could not apply as sent: illegal transitions, "
        "customer mismatches, version gaps"
    }
    id: int | None = _about("Row id", default=None, primary_key=True)
    projector: str = _about(
        "Projector (family) of the event: customers, contacts, ...", nullable=False, index=True
    )
    source: str = _about("The source the event came from", nullable=False)
    position: int = _about(
        "Position of the event in its source", sa_type=sa.BigInteger, nullable=False
    )
    event_id: str = _about("event_id of the event", nullable=False, index=True)
    event_name: str = _about("event_name of the event", nullable=False)
    aggregate_type: str = _about("aggregate_type of the event", nullable=False)
    aggregate_id: str = _about("aggregate_id of the event", nullable=False, index=True)
    kind: str = _about(
        "illegal_transition, customer_mismatch or version_gap", nullable=False, index=True
    )
    detail: str = _about("What happened, for a human", nullable=False)
    occurred_at: datetime = _timestamp(nullable=False, comment="occurred_at of the event")


_WITH_KEY = sa.text("idempotency_key IS NOT NULL")


class ProcessedEvent(SQLModel, table=True):
    """An event that counted for its aggregate: the memory behind duplicate detection."""

    __tablename__ = "processed_events"
    __table_args__ = (
        # Duplicates by key are looked up by a key: rows without one stay out of it.
        sa.Index(
            None,
            "projector",
            "aggregate_id",
            "idempotency_key",
            postgresql_where=_WITH_KEY,
            sqlite_where=_WITH_KEY,
        ),
        {"comment": "Events that counted (applied, no-op or anomaly): duplicate detection"},
    )
    event_id: str = _about("event_id of the event", primary_key=True)
    projector: str = _about("Projector (family) of the event", nullable=False)
    aggregate_id: str = _about("aggregate_id of the event", nullable=False)
    idempotency_key: str | None = _about("idempotency_key of the event, if any", default=None)
    position: int = _about(
        "Position of the event in its source", sa_type=sa.BigInteger, nullable=False
    )


class ProjectionCheckpoint(SQLModel, table=True):
    """How far one projector has read its source, written with the rows it covers."""

    __tablename__ = "projection_checkpoints"
    __table_args__ = {
        "comment": "How far each projector has read its source; written with the rows it covers"
    }
    projector: str = _about(
        "Projector name: customers, contacts, providers, channels, conversations",
        primary_key=True,
    )
    source: str = _about("The source last read (file path or db)", nullable=False)
    position: int = _about(
        "Position of the last line read", default=0, sa_type=sa.BigInteger, nullable=False
    )
    last_event_id: str | None = _about("event_id of the projector's last event read", default=None)
    last_occurred_at: datetime | None = _timestamp(
        comment="Newest occurred_at among the events read"
    )
    updated_at: datetime | None = _timestamp(comment="When the checkpoint moved (wall clock)")
    source_state: dict[str, Any] = _json_object(
        "Where to resume and how to recognise the source (byte offset, fingerprints, ...)"
    )
    fingerprint: str | None = _about(
        "Fingerprint of the handlers and table definitions that built the projector's rows",
        default=None,
    )


class ProjectionRun(SQLModel, table=True):
    """One run of `run`, `rebuild` or a scheduled catch-up, with its counters."""

    __tablename__ = "projection_runs"
    __table_args__ = {"comment": "One run of run, rebuild, follow or schedule, with its counters"}
    id: int | None = _about("Row id", default=None, primary_key=True)
    command: str = _about("The verb that ran", nullable=False)
    source: str = _about("The source it read", nullable=False)
    started_at: datetime = _timestamp(nullable=False, comment="When the run started")
    finished_at: datetime | None = _timestamp(comment="When the run ended, NULL while running")
    result: str = _about("How the run ended", nullable=False, index=True)
    counters: dict[str, Any] = _json_object("The run's counters (applied, duplicate, ...)")
    error: str | None = _about(
        "The error that ended the run, if any", default=None, sa_type=sa.Text
    )


ENTITY_TABLES: tuple[sa.Table, ...] = tuple(
    metadata.tables[name]
    for name in (
        "customers",
        "contacts",
        "providers",
        "channel_mappings",
        "conversations",
        "conversation_participants",
    )
)


class EventLogEntry(SQLModel, table=True):
    """The database event log: one stored event per row, in a global position.

    On PostgreSQL the migration adds `tx xid8 DEFAULT pg_current_xact_id()`, the
    writing transaction's id, which readers use to never skip a late commit.
    """

    __tablename__ = "event_log"
    __table_args__ = {
        "sqlite_autoincrement": True,
        "comment": "The database event log: one stored event per row, in a global position",
    }
    position: int | None = Field(
        default=None,
        sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        sa_column_kwargs={"autoincrement": True, "comment": "Global position of the event"},
    )
    event_id: str = _about("event_id of the event", nullable=False, unique=True)
    event_name: str | None = _about("event_name of the event", default=None, index=True)
    aggregate_type: str | None = _about("aggregate_type of the event", default=None)
    aggregate_id: str | None = _about("aggregate_id of the event", default=None, index=True)
    occurred_at: datetime | None = _timestamp(comment="occurred_at of the event")
    version: int | None = _about("version of the event", default=None, sa_type=sa.BigInteger)
    idempotency_key: str | None = _about("idempotency_key of the event", default=None)
    event: dict[str, Any] = _about(
        "The whole event as JSON, as imported", sa_type=JsonDocument, nullable=False
    )
    recorded_at: datetime | None = Field(
        default=None,
        sa_type=UtcDateTime,
        sa_column_kwargs={
            "server_default": sa.text("CURRENT_TIMESTAMP"),
            "comment": "When the event was appended (wall clock)",
        },
    )


TABLES: dict[str, sa.Table] = {str(t.name): t for t in metadata.sorted_tables}
