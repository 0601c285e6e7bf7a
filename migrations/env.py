"""Alembic environment: the schema comes from projections.tables, the connection from the caller."""

from __future__ import annotations

import warnings
from typing import Any

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext

from projections.config import normalise_url
from projections.db import create_engine
from projections.tables import UtcDateTime, metadata

config = context.config
# event_log.tx is PostgreSQL's xid8, unknown to SQLAlchemy and left out of comparisons.
warnings.filterwarnings("ignore", "Did not recognize type 'xid8'", sa.exc.SAWarning)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render our column types as plain SQLAlchemy so migrations never import app code."""
    if type_ != "type":
        return False
    if isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if obj.__class__.__name__ == "JSON" and getattr(obj, "_variant_mapping", None):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")'
    return False


# PostgreSQL-only objects that migrations add by hand (not part of the SQLModel tables).
POSTGRES_ONLY = {
    ("column", "tx"),
    ("index", "ix_event_log_tx_position"),
    ("table", "reader_scopes"),  # tenant scopes of reader roles, 0004 (projections/access.py)
}


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave the hand-written PostgreSQL-only objects out of comparisons."""
    return not (reflected and compare_to is None and (type_, name) in POSTGRES_ONLY)


def _configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
    )


def run_migrations_online() -> None:
    """Migrate through the connection handed over by projections, or open one from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or "sqlite:///projections.db"
    engine = create_engine(normalise_url(url))
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; use `projections migrate`")
run_migrations_online()
