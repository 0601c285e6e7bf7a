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


def _json_object() -> Any:
    return Field(default_factory=dict, sa_type=JsonDocument, nullable=False)


def _timestamp(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=UtcDateTime, nullable=nullable)


class Entity(SQLModel):
    """Columns every entity table carries (SPEC §5)."""

    version: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    created_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()
    last_event_id: str | None = None
    attributes: dict[str, Any] = _json_object()


class Customer(Entity, table=True):
    """One customer (tenant) of the platform."""

    __tablename__ = "customers"
    customer_id: str = Field(primary_key=True)
    name: str | None = None
    status: str | None = Field(default=None, index=True)
    status_reason: str | None = None


class Contact(Entity, table=True):
    """One contact of a customer; deleted contacts stay with status `deleted`."""

    __tablename__ = "contacts"
    contact_id: str = Field(primary_key=True)
    customer_id: str | None = Field(default=None, index=True)
    display_name: str | None = None
    status: str | None = Field(default=None, index=True)
    status_reason: str | None = None
    deleted_at: datetime | None = _timestamp()


class Provider(Entity, table=True):
    """One messaging provider configured by a customer."""

    __tablename__ = "providers"
    provider_id: str = Field(primary_key=True)
    customer_id: str | None = Field(default=None, index=True)
    kind: str | None = None
    status: str | None = Field(default=None, index=True)
    status_reason: str | None = None


class ChannelMapping(Entity, table=True):
    """One channel address mapped to a provider, with the provider's kind copied in."""

    __tablename__ = "channel_mappings"
    channel_id: str = Field(primary_key=True)
    customer_id: str | None = Field(default=None, index=True)
    kind: str | None = None
    address: str | None = None
    normalized: str | None = Field(default=None, index=True)
    provider_id: str | None = Field(default=None, index=True)
    provider_kind: str | None = None
    status: str | None = Field(default=None, index=True)
    status_reason: str | None = None


class Conversation(Entity, table=True):
    """One conversation with its channel and contact details copied in."""

    __tablename__ = "conversations"
    conversation_id: str = Field(primary_key=True)
    customer_id: str | None = Field(default=None, index=True)
    channel_id: str | None = Field(default=None, index=True)
    contact_id: str | None = Field(default=None, index=True)
    topic: str | None = None
    status: str | None = Field(default=None, index=True)
    status_reason: str | None = None
    closed_at: datetime | None = _timestamp()
    archived_at: datetime | None = _timestamp()
    participant_count: int = Field(default=0, nullable=False)
    channel_kind: str | None = None
    channel_address: str | None = None
    contact_display_name: str | None = None


class ConversationParticipant(SQLModel, table=True):
    """One participant of one conversation; removal keeps the row inactive."""

    __tablename__ = "conversation_participants"
    conversation_id: str = Field(primary_key=True)
    participant_id: str = Field(primary_key=True, index=True)
    customer_id: str | None = Field(default=None, index=True)
    active: bool = Field(default=True, nullable=False)
    added_at: datetime | None = _timestamp()
    removed_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()
    last_event_id: str | None = None


class QuarantinedEvent(SQLModel, table=True):
    """A line that broke a rule of the contract: kept raw with its reason, never applied."""

    __tablename__ = "quarantined_events"
    __table_args__ = (sa.UniqueConstraint("source", "position"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(nullable=False)
    position: int = Field(sa_type=sa.BigInteger, nullable=False)
    event_id: str | None = Field(default=None, index=True)
    event_name: str | None = None
    reason: str = Field(nullable=False, index=True)
    message: str = Field(nullable=False)
    raw: str = Field(sa_type=sa.Text, nullable=False)
    quarantined_at: datetime = _timestamp(nullable=False)


class EventAnomaly(SQLModel, table=True):
    """A valid event that could not apply as sent (illegal transition, owner mismatch, gap)."""

    __tablename__ = "event_anomalies"
    id: int | None = Field(default=None, primary_key=True)
    projector: str = Field(nullable=False, index=True)
    source: str = Field(nullable=False)
    position: int = Field(sa_type=sa.BigInteger, nullable=False)
    event_id: str = Field(nullable=False, index=True)
    event_name: str = Field(nullable=False)
    aggregate_type: str = Field(nullable=False)
    aggregate_id: str = Field(nullable=False, index=True)
    kind: str = Field(nullable=False, index=True)
    detail: str = Field(nullable=False)
    occurred_at: datetime = _timestamp(nullable=False)


class ProcessedEvent(SQLModel, table=True):
    """An event that counted for its aggregate: the memory behind duplicate detection."""

    __tablename__ = "processed_events"
    __table_args__ = (sa.Index(None, "projector", "aggregate_id", "idempotency_key"),)
    event_id: str = Field(primary_key=True)
    projector: str = Field(nullable=False)
    aggregate_id: str = Field(nullable=False)
    idempotency_key: str | None = None
    position: int = Field(sa_type=sa.BigInteger, nullable=False)


class ProjectionCheckpoint(SQLModel, table=True):
    """How far one projector has read its source, written with the rows it covers."""

    __tablename__ = "projection_checkpoints"
    projector: str = Field(primary_key=True)
    source: str = Field(nullable=False)
    position: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    last_event_id: str | None = None
    last_occurred_at: datetime | None = _timestamp()
    updated_at: datetime | None = _timestamp()
    source_state: dict[str, Any] = _json_object()


class ProjectionRun(SQLModel, table=True):
    """One run of `run`, `rebuild` or a scheduled catch-up, with its counters."""

    __tablename__ = "projection_runs"
    id: int | None = Field(default=None, primary_key=True)
    command: str = Field(nullable=False)
    source: str = Field(nullable=False)
    started_at: datetime = _timestamp(nullable=False)
    finished_at: datetime | None = _timestamp()
    result: str = Field(nullable=False, index=True)
    counters: dict[str, Any] = _json_object()
    error: str | None = Field(default=None, sa_type=sa.Text)


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
    __table_args__ = {"sqlite_autoincrement": True}
    position: int | None = Field(
        default=None,
        sa_type=sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        sa_column_kwargs={"autoincrement": True},
    )
    event_id: str = Field(nullable=False, unique=True)
    event_name: str | None = Field(default=None, index=True)
    aggregate_type: str | None = None
    aggregate_id: str | None = Field(default=None, index=True)
    occurred_at: datetime | None = _timestamp()
    version: int | None = Field(default=None, sa_type=sa.BigInteger)
    idempotency_key: str | None = None
    event: dict[str, Any] = Field(sa_type=JsonDocument, nullable=False)
    recorded_at: datetime | None = Field(
        default=None,
        sa_type=UtcDateTime,
        sa_column_kwargs={"server_default": sa.text("CURRENT_TIMESTAMP")},
    )


TABLES: dict[str, sa.Table] = {str(t.name): t for t in metadata.sorted_tables}
