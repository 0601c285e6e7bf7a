"""Tenant-scoped read access on PostgreSQL: login roles that SELECT only their customers' rows.

Migration 0004 puts row-level security (ENABLE and FORCE) on every table with a
`customer_id`: the role that migrated (the owner, which runs the projector) sees and
writes every row; any other role sees the rows of the customers that `reader_scopes`
lists for its login role (`session_user`), which no session variable or SET ROLE
changes. This module creates those roles, grants them SELECT on the tenant tables and
the `security_invoker` views, and keeps `reader_scopes`. See docs/tables.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.errors import ConfigurationError, ProjectionsError, SchemaError
from projections.tables import ENTITY_TABLES, TABLES

TENANT_TABLES: Final = tuple(str(t.name) for t in ENTITY_TABLES if "customer_id" in t.c)
READER_VIEWS: Final = ("open_conversations", "customer_overview", "channel_directory")
# Everything a reader must not touch, revoked when it is granted or revoked.
_OTHER_RELATIONS: Final = (
    *(name for name in TABLES if name not in TENANT_TABLES),
    "reader_scopes",
    "alembic_version",
)
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


@dataclass
class ReaderScope:
    """A reader role and the customers it may read after a grant or revoke."""

    role: str
    customers: list[str]
    created: bool = False
    dropped: bool = False
    unknown_customers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The scope as plain data for --json."""
        return asdict(self)


def grant_reader(
    engine: Engine,
    role: str,
    customers: Sequence[str],
    *,
    password: str | None = None,
    replace: bool = False,
) -> ReaderScope:
    """Create or update a login role that can only SELECT the given customers' rows."""
    _require_postgres(engine, "grant-reader")
    _check_role_name(role)
    if not customers or any(not c for c in customers):
        raise ConfigurationError("grant-reader needs at least one non-empty --customer")
    verifier = scram_sha256(password) if password is not None else None
    with engine.begin() as connection:
        _require_schema(connection)
        exists = _refuse_privileged(connection, role)
        quoted = _quote(role)
        if exists:
            connection.exec_driver_sql(f"ALTER ROLE {quoted} LOGIN")
        else:
            connection.exec_driver_sql(
                f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOREPLICATION NOBYPASSRLS"
            )
        if verifier is not None:
            # A SCRAM verifier, not the password: the plain text never reaches the server.
            connection.exec_driver_sql(f"ALTER ROLE {quoted} PASSWORD '{verifier}'")
        _revoke_everything(connection, quoted)
        database = _quote(_scalar(connection, "SELECT current_database()"))
        schema = _quote(_scalar(connection, "SELECT current_schema()"))
        connection.exec_driver_sql(f"GRANT CONNECT ON DATABASE {database} TO {quoted}")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}")
        relations = ", ".join([*TENANT_TABLES, *_invoker_views(connection)])
        connection.exec_driver_sql(f"GRANT SELECT ON {relations} TO {quoted}")
        if replace:
            connection.execute(
                sa.text("DELETE FROM reader_scopes WHERE role_name = :role"), {"role": role}
            )
        connection.execute(
            sa.text(
                "INSERT INTO reader_scopes (role_name, customer_id) VALUES (:role, :customer) "
                "ON CONFLICT DO NOTHING"
            ),
            [{"role": role, "customer": c} for c in dict.fromkeys(customers)],
        )
        scope = _scope(connection, role)
        known = set(
            connection.execute(
                sa.text("SELECT customer_id FROM customers WHERE customer_id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": scope},
            ).scalars()
        )
    return ReaderScope(
        role, scope, created=not exists, unknown_customers=[c for c in scope if c not in known]
    )


def revoke_reader(
    engine: Engine,
    role: str,
    customers: Sequence[str] = (),
    *,
    drop_role: bool = False,
) -> ReaderScope:
    """Remove customers from a reader's scope, or all of its access (and the role itself)."""
    _require_postgres(engine, "revoke-reader")
    _check_role_name(role)
    if drop_role and customers:
        raise ConfigurationError("--drop-role removes the whole role: leave out --customer")
    with engine.begin() as connection:
        _require_schema(connection)
        exists = _refuse_privileged(connection, role)
        if customers:
            connection.execute(
                sa.text(
                    "DELETE FROM reader_scopes WHERE role_name = :role AND customer_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"role": role, "ids": list(customers)},
            )
            return ReaderScope(role, _scope(connection, role))
        connection.execute(
            sa.text("DELETE FROM reader_scopes WHERE role_name = :role"), {"role": role}
        )
        if not exists:
            return ReaderScope(role, [])
        quoted = _quote(role)
        _revoke_everything(connection, quoted)
        database = _quote(_scalar(connection, "SELECT current_database()"))
        schema = _quote(_scalar(connection, "SELECT current_schema()"))
        connection.exec_driver_sql(f"REVOKE CONNECT ON DATABASE {database} FROM {quoted}")
        connection.exec_driver_sql(f"REVOKE USAGE ON SCHEMA {schema} FROM {quoted}")
        if not drop_role:
            return ReaderScope(role, [])
        try:
            connection.exec_driver_sql(f"DROP ROLE {quoted}")
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "2BP01":  # dependent objects exist
                raise
            detail = str(exc.orig).strip().splitlines()[0]
            raise ProjectionsError(
                f"role {role} still has access elsewhere ({detail}): run revoke-reader "
                "against that database too, then --drop-role; nothing was changed"
            ) from None
    return ReaderScope(role, [], dropped=True)


def scram_sha256(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier for an ASCII password (what `\\password` sends)."""
    if not password or not password.isascii() or not password.isprintable():
        # Non-ASCII passwords go through SASLprep on the server; refuse rather than guess.
        raise ConfigurationError("the reader's password must be printable ASCII")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _require_postgres(engine: Engine, verb: str) -> None:
    if engine.dialect.name != "postgresql":
        raise ConfigurationError(
            f"{verb} needs PostgreSQL: SQLite has no roles or row-level security, and anyone "
            "who can open the file reads all of it"
        )


def _require_schema(connection: sa.Connection) -> None:
    found = connection.exec_driver_sql("SELECT to_regclass('reader_scopes')").scalar()
    if found is None:
        raise SchemaError(
            "this database has no tenant access yet (schema before revision 0004): run "
            "`projections migrate` as the role that owns the tables"
        )


def _check_role_name(role: str) -> None:
    if not _ROLE_NAME.match(role) or len(role.encode()) > 63 or role.lower().startswith("pg_"):
        raise ConfigurationError(
            f"{role!r} is not a usable role name: letters, digits, _ . - (at most 63 bytes, "
            "not starting with pg_)"
        )


_PRIVILEGED = sa.text(
    """
    SELECT r.rolname,
           EXISTS (SELECT 1 FROM pg_roles s
                   WHERE (s.rolsuper OR s.rolbypassrls)
                     AND pg_has_role(r.oid, s.oid, 'MEMBER')) AS bypasses,
           pg_has_role(r.oid, c.relowner, 'MEMBER') AS owns,
           r.rolname = current_user OR r.rolname = session_user AS is_me
    FROM pg_roles r, pg_class c
    WHERE r.rolname = :role AND c.oid = 'customers'::regclass
    """
)


def _refuse_privileged(connection: sa.Connection, role: str) -> bool:
    """Refuse roles that row-level security cannot hold; True when the role exists."""
    found = connection.execute(_PRIVILEGED, {"role": role}).mappings().first()
    if found is None:
        return False
    if found["is_me"] or found["owns"]:
        raise ConfigurationError(
            f"{role} owns the read model (or is a member of its owner) and writes it: "
            "a reader must be a role of its own"
        )
    if found["bypasses"]:
        raise ConfigurationError(
            f"{role} is (or can become) a superuser or BYPASSRLS role: row-level security "
            "cannot limit it, so it cannot be a scoped reader"
        )
    return True


def _revoke_everything(connection: sa.Connection, quoted: str) -> None:
    # Whatever the role was given on the read model before, only SELECT grants follow.
    present = connection.execute(
        sa.text(
            "SELECT name FROM unnest(CAST(:names AS text[])) AS name "
            "WHERE to_regclass(name) IS NOT NULL"
        ),
        {"names": [*TENANT_TABLES, *_OTHER_RELATIONS, *READER_VIEWS]},
    ).scalars()
    connection.exec_driver_sql(f"REVOKE ALL ON {', '.join(present)} FROM {quoted}")


def _invoker_views(connection: sa.Connection) -> list[str]:
    # A view without security_invoker runs as its owner and would show every customer.
    return list(
        connection.execute(
            sa.text(
                "SELECT c.relname FROM pg_class c "
                "WHERE c.relkind = 'v' AND c.relname IN :names "
                "AND c.relnamespace = current_schema()::regnamespace "
                "AND 'security_invoker=true' = ANY (coalesce(c.reloptions, '{}'))"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": list(READER_VIEWS)},
        ).scalars()
    )


def _scope(connection: sa.Connection, role: str) -> list[str]:
    return list(
        connection.execute(
            sa.text("SELECT customer_id FROM reader_scopes WHERE role_name = :role ORDER BY 1"),
            {"role": role},
        ).scalars()
    )


def _scalar(connection: sa.Connection, query: str) -> str:
    return str(connection.exec_driver_sql(query).scalar_one())


def _quote(name: str) -> str:
    # Always quoted: a role named "Alice" or "a-b" stays exactly that role.
    return '"' + name.replace('"', '""') + '"'
