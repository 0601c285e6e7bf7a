"""Tenant-scoped readers on PostgreSQL, proven with real login roles and real connections."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import errors
from sqlalchemy.engine import URL

from projections.access import TENANT_TABLES, scram_sha256
from projections.config import normalise_url
from projections.db import create_engine
from projections.migrate import upgrade
from tests.helpers import Database, append_log, cli, ev

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.ndjson"
VIEWS = ("open_conversations", "customer_overview", "channel_directory")
BOOKKEEPING = (
    "quarantined_events",
    "event_log",
    "projection_checkpoints",
    "processed_events",
    "event_anomalies",
    "projection_runs",
    "reader_scopes",
    "alembic_version",
)
SCOPE = ("cus_000007", "cus_000018")


@dataclass
class Tenancy:
    """A database owned by a non-superuser role that migrated it and runs the projector."""

    server: URL
    name: str
    owner: str
    log: Path

    def url(self, user: str | None = None) -> URL:
        """The database's URL as `user` (the superuser when None)."""
        url = self.server.set(database=self.name)
        return url.set(username=user) if user else url

    def text(self, user: str | None = None) -> str:
        """The URL as text for the command line."""
        return self.url(user).render_as_string(hide_password=False)

    def connect(self, user: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
        """A real connection as `user` (trust authentication on the test server)."""
        url = self.url(user)
        return psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            dbname=self.name,
            user=url.username,
            autocommit=True,
            connect_timeout=5,
        )


@pytest.fixture(scope="module")
def tenancy(postgres_server: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    """A database owned, migrated and projected (the sample) by its own non-superuser role."""
    suffix = uuid.uuid4().hex[:10]
    owner, name = f"proj_owner_{suffix}", f"projections_tenancy_{suffix}"
    log = tmp_path_factory.mktemp("tenancy") / "events.ndjson"
    shutil.copyfile(SAMPLE, log)
    with _admin(postgres_server) as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    tenancy = Tenancy(postgres_server, name, owner, log)
    try:
        owned = Database("postgres", tenancy.url(owner), log.parent)
        upgrade(owned.engine)
        owned.project(log, fresh=True)
        owned.close()
        yield tenancy
    finally:
        with _admin(postgres_server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')


def _admin(server: URL) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host=server.host,
        port=server.port or 5432,
        dbname=server.database,
        user=server.username,
        autocommit=True,
    )


Grant = Callable[..., str]


@pytest.fixture
def reader(tenancy: Tenancy) -> Iterator[Grant]:
    """grant-reader for a new, uniquely named role; every role made is dropped afterwards."""
    made: list[str] = []

    def grant(*customers: str, name: str | None = None, options: tuple[str, ...] = ()) -> str:
        role = name or f"reader_{uuid.uuid4().hex[:10]}"
        made.append(role)
        args = [a for c in customers for a in ("--customer", c)]
        done = cli("grant-reader", role, *args, *options, "--database-url", tenancy.text())
        assert done.returncode == 0, done.stderr
        return role

    yield grant
    with tenancy.connect() as admin:
        for role in made:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                admin.execute(f'DROP OWNED BY "{role}"')
                admin.execute(f'DROP ROLE "{role}"')


def _rows(connection: psycopg.Connection[tuple[Any, ...]], query: str) -> list[tuple[Any, ...]]:
    return sorted(connection.execute(query).fetchall(), key=repr)


def test_a_reader_sees_only_its_customers_in_every_table_and_view(
    tenancy: Tenancy, reader: Grant
) -> None:
    """Every customer table and view shows the reader exactly its customers' rows."""
    role = reader(*SCOPE)
    with tenancy.connect() as admin, tenancy.connect(role) as mine:
        assert mine.execute("SELECT session_user").fetchone() == (role,)
        for relation in (*TENANT_TABLES, *VIEWS):
            everything = _rows(admin, f"SELECT * FROM {relation}")
            theirs = _rows(mine, f"SELECT * FROM {relation}")
            allowed = _rows(
                admin,
                f"SELECT * FROM {relation} WHERE customer_id IN ('{SCOPE[0]}', '{SCOPE[1]}')",
            )
            assert theirs == allowed, relation
            assert 0 < len(theirs) < len(everything), relation
            assert {r[0] for r in mine.execute(f"SELECT customer_id FROM {relation}")} <= set(SCOPE)


def test_session_variables_and_role_tricks_do_not_widen_the_scope(
    tenancy: Tenancy, reader: Grant
) -> None:
    """SET app.customer_id, set_config, SET ROLE and row_security=off give a reader nothing more."""
    role = reader(SCOPE[0])
    with tenancy.connect(role) as mine:
        before = mine.execute("SELECT count(*) FROM conversations").fetchone()
        mine.execute("SET app.customer_id = 'cus_000001'")
        mine.execute("SELECT set_config('app.customer_id', 'cus_000018', false)")
        mine.execute("SET app.tenant = 'cus_000001'")
        assert mine.execute("SELECT count(*) FROM conversations").fetchone() == before
        assert {r[0] for r in mine.execute("SELECT customer_id FROM customers")} == {SCOPE[0]}
        for attempt in (
            f'SET ROLE "{tenancy.owner}"',
            f'SET SESSION AUTHORIZATION "{tenancy.owner}"',
            "SET ROLE postgres",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                mine.execute(attempt)
        mine.execute("SET row_security = off")
        with pytest.raises(errors.InsufficientPrivilege):
            mine.execute("SELECT count(*) FROM conversations")
        mine.execute("RESET row_security")
        scope = [r[0] for r in mine.execute("SELECT projections_reader_customers()")]
        assert scope == [SCOPE[0]]


def test_a_reader_cannot_read_quarantine_event_log_or_checkpoints(
    tenancy: Tenancy, reader: Grant
) -> None:
    """Raw quarantined lines, the event log, checkpoints and the rest are denied outright."""
    role = reader(*SCOPE)
    with tenancy.connect(role) as mine:
        for table in BOOKKEEPING:
            with pytest.raises(errors.InsufficientPrivilege):
                mine.execute(f"SELECT * FROM {table} LIMIT 1")


def test_a_reader_cannot_write(tenancy: Tenancy, reader: Grant) -> None:
    """INSERT, UPDATE, DELETE and TRUNCATE are denied on every table, even on its own rows."""
    role = reader(*SCOPE)
    with tenancy.connect(role) as mine:
        for relation in (*TENANT_TABLES, "reader_scopes"):
            for statement in (
                f"INSERT INTO {relation} (customer_id) VALUES ('{SCOPE[0]}')",
                f"UPDATE {relation} SET customer_id = customer_id",
                f"DELETE FROM {relation} WHERE customer_id = '{SCOPE[0]}'",
                f"TRUNCATE {relation}",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    mine.execute(statement)
        for relation in (*TENANT_TABLES, *VIEWS, *BOOKKEEPING):
            writable = mine.execute(
                "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, "
                "TRIGGER')",
                (relation,),
            ).fetchone()
            assert writable == (False,), relation
        with pytest.raises(errors.InsufficientPrivilege):
            mine.execute("CREATE TABLE public.mine (id int)")
    with tenancy.connect() as admin:
        assert admin.execute(
            "SELECT count(*) FROM customers WHERE customer_id = %s", (SCOPE[0],)
        ).fetchone() == (1,)


def test_revoking_takes_access_away(tenancy: Tenancy, reader: Grant) -> None:
    """revoke-reader narrows the scope, then removes every privilege, then the role."""
    role = reader(*SCOPE)
    url = tenancy.text()
    done = cli("revoke-reader", role, "--customer", SCOPE[1], "--database-url", url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["customers"] == [SCOPE[0]]
    with tenancy.connect(role) as mine:
        assert {r[0] for r in mine.execute("SELECT customer_id FROM contacts")} == {SCOPE[0]}
    done = cli("revoke-reader", role, "--database-url", url)
    assert done.returncode == 0, done.stderr
    with tenancy.connect(role) as mine:
        for relation in (*TENANT_TABLES, *VIEWS):
            with pytest.raises(errors.InsufficientPrivilege):
                mine.execute(f"SELECT 1 FROM {relation} LIMIT 1")
    done = cli("revoke-reader", role, "--drop-role", "--database-url", url)
    assert done.returncode == 0, done.stderr
    with pytest.raises(psycopg.OperationalError):
        tenancy.connect(role)


def test_grant_is_idempotent_adds_and_replaces(tenancy: Tenancy, reader: Grant) -> None:
    """Granting again changes nothing, another customer widens, --replace sets the scope."""
    role = reader(SCOPE[0])
    url = tenancy.text()

    def scope(*args: str) -> dict[str, Any]:
        done = cli("grant-reader", role, *args, "--database-url", url, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    again = scope("--customer", SCOPE[0])
    assert (again["customers"], again["created"]) == ([SCOPE[0]], False)
    assert scope("--customer", SCOPE[1])["customers"] == sorted(SCOPE)
    with tenancy.connect(role) as mine:
        assert {r[0] for r in mine.execute("SELECT customer_id FROM customers")} == set(SCOPE)
    assert scope("--customer", "cus_000001", "--replace")["customers"] == ["cus_000001"]
    with tenancy.connect(role) as mine:
        assert {r[0] for r in mine.execute("SELECT customer_id FROM customers")} == {"cus_000001"}
    unknown = scope("--customer", "cus_999999")
    assert unknown["unknown_customers"] == ["cus_999999"]


def test_the_projector_writes_through_its_own_role_under_forced_rls(
    tenancy: Tenancy, reader: Grant
) -> None:
    """The owner (no superuser) keeps projecting with FORCE RLS on; readers see only theirs."""
    role = reader(SCOPE[0])
    with tenancy.connect() as admin:
        forced = admin.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
            "AND relnamespace = 'public'::regnamespace"
        ).fetchall()
        assert {r[0] for r in forced} >= set(TENANT_TABLES)
        superuser = admin.execute(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (tenancy.owner,)
        ).fetchone()
        assert superuser == (False,)
    append_log(
        tenancy.log,
        [
            ev("ContactCreated", "con_tenancy_a", customer_id=SCOPE[0], display_name="A"),
            ev("ContactCreated", "con_tenancy_b", customer_id="cus_000001", display_name="B"),
        ],
    )
    owner_url = tenancy.text(tenancy.owner)
    done = cli("run", "--source", str(tenancy.log), "--database-url", owner_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 2
    with tenancy.connect(tenancy.owner) as owner, tenancy.connect() as admin:
        total = "SELECT count(*) FROM contacts"
        assert owner.execute(total).fetchone() == admin.execute(total).fetchone()
    with tenancy.connect(role) as mine:
        ids = {r[0] for r in mine.execute("SELECT contact_id FROM contacts")}
    assert "con_tenancy_a" in ids
    assert "con_tenancy_b" not in ids


def test_a_rebuild_keeps_readers_scoped_and_the_owner_writing(
    tenancy: Tenancy, reader: Grant
) -> None:
    """After the owner rebuilds, scopes, denials, views and comments hold and it still writes."""
    role = reader(SCOPE[1])
    owner_url = tenancy.text(tenancy.owner)
    done = cli("rebuild", "--source", str(tenancy.log), "--database-url", owner_url)
    assert done.returncode == 0, done.stderr
    append_log(tenancy.log, [ev("ContactCreated", "con_after", customer_id=SCOPE[1])])
    done = cli("run", "--source", str(tenancy.log), "--database-url", owner_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 1
    with tenancy.connect(role) as mine:
        for relation in (*TENANT_TABLES, *VIEWS):
            found = {r[0] for r in mine.execute(f"SELECT customer_id FROM {relation}")}
            assert found == {SCOPE[1]}, relation
        assert mine.execute("SELECT 1 FROM contacts WHERE contact_id = 'con_after'").fetchone()
        with pytest.raises(errors.InsufficientPrivilege):
            mine.execute("SELECT * FROM quarantined_events")
    with tenancy.connect() as admin:
        invoker = admin.execute(
            "SELECT count(*) FROM pg_class WHERE relkind = 'v' "
            "AND relnamespace = 'public'::regnamespace "
            "AND 'security_invoker=true' = ANY (reloptions)"
        ).fetchone()
        assert invoker == (len(VIEWS),)
        comment = admin.execute("SELECT col_description('contacts'::regclass, 1)").fetchone()
        assert comment is not None and comment[0]


def test_every_customer_table_is_forced_and_every_view_is_security_invoker(
    tenancy: Tenancy,
) -> None:
    """Row-level security is enabled and forced on each table with a customer_id column."""
    with tenancy.connect() as admin:
        tables = admin.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'customer_id' "
            "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace "
            "AND c.relname <> 'reader_scopes'"
        ).fetchall()
        assert {t[0] for t in tables} == set(TENANT_TABLES)
        assert all(t[1] and t[2] for t in tables), tables
        policies = admin.execute(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public'"
        ).fetchall()
        assert {(t, "tenant_reader") for t in TENANT_TABLES} <= set(policies)
        views = admin.execute(
            "SELECT relname, reloptions FROM pg_class "
            "WHERE relkind = 'v' AND relnamespace = 'public'::regnamespace"
        ).fetchall()
        assert {v[0] for v in views} == set(VIEWS)
        assert all("security_invoker=true" in (v[1] or []) for v in views), views


def test_roles_that_bypass_row_level_security_cannot_be_readers(
    tenancy: Tenancy, reader: Grant
) -> None:
    """The owner, its members, superusers and BYPASSRLS roles are refused with exit code 2."""
    url = tenancy.text()
    suffix = uuid.uuid4().hex[:8]
    privileged = {
        f"su_{suffix}": "SUPERUSER",
        f"bypass_{suffix}": "BYPASSRLS",
        f"member_{suffix}": f'IN ROLE "{tenancy.owner}"',
    }
    with tenancy.connect() as admin:
        for name, option in privileged.items():
            admin.execute(f'CREATE ROLE "{name}" LOGIN {option}')
    try:
        for name in [tenancy.owner, *privileged]:
            done = cli("grant-reader", name, "--customer", SCOPE[0], "--database-url", url)
            assert done.returncode == 2, (name, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
    finally:
        with tenancy.connect() as admin:
            for name in privileged:
                admin.execute(f'DROP ROLE "{name}"')
            scopes = admin.execute(
                "SELECT count(*) FROM reader_scopes WHERE role_name = ANY(%s)",
                ([tenancy.owner, *privileged],),
            ).fetchone()
    assert scopes == (0,)


def test_the_owner_can_grant_readers_itself(tenancy: Tenancy, reader: Grant) -> None:
    """grant-reader run as the owner (with CREATEROLE) makes a working scoped reader."""
    role = f"reader_{uuid.uuid4().hex[:10]}"
    owner_url = tenancy.text(tenancy.owner)
    done = cli("grant-reader", role, "--customer", SCOPE[0], "--database-url", owner_url)
    assert done.returncode == 0, done.stderr
    reader(SCOPE[0], name=role)  # registers the role for clean-up (a no-op grant)
    with tenancy.connect(role) as mine:
        assert {r[0] for r in mine.execute("SELECT customer_id FROM open_conversations")} == {
            SCOPE[0]
        }


def test_the_password_is_stored_as_a_scram_verifier(tenancy: Tenancy, reader: Grant) -> None:
    """--password sets a SCRAM-SHA-256 verifier that PostgreSQL would accept for it."""
    role = reader(SCOPE[0], options=("--password", "correct horse battery"))
    with tenancy.connect() as admin:
        (stored,) = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone() or (None,)
        admin.execute("SET password_encryption = 'scram-sha-256'")
        probe = f"probe_{uuid.uuid4().hex[:8]}"
        admin.execute(f"CREATE ROLE \"{probe}\" PASSWORD 'correct horse battery'")
        (server,) = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (probe,)
        ).fetchone() or (None,)
        admin.execute(f'DROP ROLE "{probe}"')
    for verifier in (stored, server):
        assert verifier.startswith("SCRAM-SHA-256$")
        iterations, salt = verifier.split("$")[1].split(":")
        expected = scram_sha256(
            "correct horse battery", salt=base64.b64decode(salt), iterations=int(iterations)
        )
        assert verifier == expected


def test_grant_reader_on_sqlite_exits_2(tmp_path: Path) -> None:
    """SQLite has no roles: grant-reader and revoke-reader refuse with exit code 2."""
    url = f"sqlite:///{tmp_path / 'readers.db'}"
    engine = create_engine(normalise_url(url))
    upgrade(engine)
    engine.dispose()
    for verb in ("grant-reader", "revoke-reader"):
        done = cli(verb, "alice", "--customer", "cus_1", "--database-url", url)
        assert done.returncode == 2
        assert "PostgreSQL" in done.stderr
    with sa.create_engine(url).connect() as connection:
        assert "reader_scopes" not in sa.inspect(connection).get_table_names()
