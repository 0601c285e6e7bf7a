"""ledger idempotency index: only rows with a key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00

Duplicates by idempotency key are only ever looked up by a key; about half the
ledger's rows have none, and the index no longer holds them (each rebuild and run
writes half as many entries into it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ix_processed_events_projector_aggregate_id_idempotency_key"
_COLUMNS = ["projector", "aggregate_id", "idempotency_key"]
_WITH_KEY = sa.text("idempotency_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index(_NAME, table_name="processed_events")
    op.create_index(
        _NAME,
        "processed_events",
        _COLUMNS,
        unique=False,
        postgresql_where=_WITH_KEY,
        sqlite_where=_WITH_KEY,
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="processed_events")
    op.create_index(_NAME, "processed_events", _COLUMNS, unique=False)
