"""One database fixture, `sqlite` and `postgres`, migrated once per session and emptied per test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from projections.config import normalise_url
from projections.db import create_engine
from projections.migrate import upgrade
from projections.tables import metadata
from tests.helpers import Database

ADMIN_URL = os.environ.get(
    "PROJECTIONS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


def postgres_available() -> str | None:
    """None when the test server answers, else the reason it does not."""
    try:
        with _admin_connect():
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    """A fresh PostgreSQL database for this test session (or xdist worker), dropped at the end."""
    problem = postgres_available()
    if problem is not None:
        message = f"PostgreSQL is not reachable at {ADMIN_URL}: {problem}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"projections_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = normalise_url(ADMIN_URL).set(database=name)
    yield url
    with _admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_template(postgres_server: URL) -> URL:
    """The session's PostgreSQL database, migrated once."""
    engine = create_engine(postgres_server)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return postgres_server


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = create_engine(normalise_url(f"sqlite:///{path}"))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return path


def _empty_postgres(url: URL) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
            extra = connection.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename NOT IN :known"
                ).bindparams(sa.bindparam("known", expanding=True)),
                {"known": [*metadata.tables, "alembic_version"]},
            ).scalars()
            for name in list(extra):
                connection.execute(sa.text(f'TRUNCATE "{name}" RESTART IDENTITY'))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty read-model database of each kind."""
    yield from _database(request, tmp_path, request.param)


@pytest.fixture
def postgres_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty PostgreSQL read model, for behaviour SQLite does not have."""
    yield from _database(request, tmp_path, "postgres")


def _database(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Iterator[Database]:
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "projections.db"
        shutil.copyfile(template, path)
        url = normalise_url(f"sqlite:///{path}")
    else:
        url = request.getfixturevalue("postgres_template")
        _empty_postgres(url)
    db = Database(kind, url, tmp_path)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def blank_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database with no schema at all, of each kind."""
    if request.param == "sqlite":
        url = normalise_url(f"sqlite:///{tmp_path / 'blank.db'}")
        db = Database("sqlite", url, tmp_path)
        yield db
        db.close()
        return
    server: URL = request.getfixturevalue("postgres_server")
    name = f"projections_blank_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = Database("postgres", server.set(database=name), tmp_path)
    try:
        yield db
    finally:
        db.close()
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
