"""projector fingerprint

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projection_checkpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "fingerprint",
                sa.String(),
                nullable=True,
                comment="Fingerprint of the handlers and table definitions that built the "
                "projector's rows",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("projection_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
