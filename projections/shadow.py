"""Rebuild without downtime: build a shadow read model, catch it up, verify it, swap it in.

PostgreSQL builds in the schema `projections_shadow` (unqualified names resolve there
first through the search path) while the live tables keep answering. The swap is one
short transaction under the writers' lock: catch the shadow up to the source's head,
check it, copy the live tables' grants, row-level security and policies onto it, move
the live tables to an `projections_old_*` schema and the shadow ones into `public`,
and re-point the views. Readers never see a missing, empty or half-built table.

SQLite builds in a file beside the database and copies the rows in within one
transaction: readers (WAL) keep seeing the old rows until it commits.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections import dialect
from projections.config import DEFAULT_SHADOW_COMMIT_SECONDS, Settings
from projections.db import create_engine
from projections.errors import ProjectionsError
from projections.fold import COPIES
from projections.projector import ProgressCallback, RunResult, catch_up, one_batch
from projections.schema import PROJECTOR_TABLES
from projections.sources import Source
from projections.tables import TABLES, metadata

SHARED = ("processed_events", "event_anomalies", "quarantined_events", "projection_checkpoints")
READ_MODEL = (*(t for ts in PROJECTOR_TABLES.values() for t in ts), *SHARED)
SHADOW = "projections_shadow"


class RebuildError(ProjectionsError):
    """The shadow read model could not be built or did not pass its checks."""


@dataclass
class SwapReport:
    """What a finished rebuild swapped in."""

    rows: dict[str, int] = field(default_factory=dict)
    swap_seconds: float = 0.0
    kept_old: str | None = None


def entity_tables(projectors: Sequence[str]) -> list[str]:
    """The entity tables the given projectors own."""
    return [t for p in projectors for t in PROJECTOR_TABLES[p]]


class Shadow:
    """A read model built apart from the live one (a schema, or a file on SQLite)."""

    def __init__(self, live: Engine, projectors: Sequence[str], name: str = SHADOW) -> None:
        self.live = live
        self.projectors = tuple(projectors)
        self.name = name
        self.postgres = live.dialect.name == "postgresql"
        self.full = set(self.projectors) == set(PROJECTOR_TABLES)
        self.engine: Engine | None = None
        if not self.postgres:
            database = live.url.database
            if not database or database == ":memory:":
                raise RebuildError("a rebuild without downtime needs a SQLite file")
            self.path = Path(f"{database}.{name}")

    # --- building ---------------------------------------------------------------------

    def exists(self) -> bool:
        """True when a shadow from an earlier, unfinished rebuild is there to resume."""
        if self.postgres:
            with self.live.connect() as connection:
                return bool(
                    connection.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_tables WHERE schemaname = :s "
                            "AND tablename = 'projection_checkpoints'"
                        ),
                        {"s": self.name},
                    ).scalar_one()
                )
        if not self.path.exists():
            return False
        probe = create_engine(self.live.url.set(database=str(self.path)))
        try:
            return sa.inspect(probe).has_table("projection_checkpoints")
        finally:
            probe.dispose()

    @property
    def where(self) -> str:
        """Where the shadow lives, as messages name it."""
        return f"schema {self.name}" if self.postgres else f"file {self.path}"

    @contextmanager
    def claimed(self, task: str) -> Iterator[dialect.Claim]:
        """Hold this shadow until the block ends; refuse if another process holds it."""
        with ExitStack() as stack:
            try:
                claim = stack.enter_context(dialect.claim(self.live, self.name))
            except OSError as exc:  # the SQLite lock file: permissions, no locks on this disk
                raise RebuildError(f"cannot lock the {self.where}: {exc.strerror or exc}") from None
            if claim is None:
                raise RebuildError(
                    f"another {task} is using the {self.where} of this database: wait for it to "
                    "end, or stop it first"
                )
            yield claim

    def lost(self, task: str) -> RebuildError:
        """The error of a build whose claim on the shadow ended under it."""
        return RebuildError(
            f"the {task} lost its hold on the {self.where} (its database session ended, or the "
            "lock file was removed): nothing was swapped in, and the shadow is left as it is"
        )

    def prepare(self, *, resume: bool) -> bool:
        """Create an empty shadow (or keep the one there when resuming); True if resumed."""
        if resume and self.exists():
            self.engine = self._open()
            return True
        self.drop()
        if self.postgres:
            with self.live.begin() as connection:
                connection.exec_driver_sql(f'CREATE SCHEMA "{self.name}"')
                translated = connection.execution_options(schema_translate_map={None: self.name})
                metadata.create_all(translated, tables=[TABLES[t] for t in READ_MODEL])
                _deferred_indexes(translated, create=False)
                for table in self._parents():
                    columns = _columns(table)
                    connection.exec_driver_sql(
                        f'INSERT INTO "{self.name}".{table} ({columns}) '
                        f"SELECT {columns} FROM public.{table}"
                    )
        self.engine = self._open()
        if not self.postgres:
            with self.engine.begin() as connection:
                metadata.create_all(connection, tables=[TABLES[t] for t in READ_MODEL])
                _deferred_indexes(connection, create=False)
            if self._parents():
                with _attached(self.engine, self.live, "live") as connection:
                    for table in self._parents():
                        columns = _columns(table)
                        connection.exec_driver_sql(
                            f"INSERT INTO main.{table} ({columns}) "
                            f"SELECT {columns} FROM live.{table}"
                        )
        return False

    def _parents(self) -> list[str]:
        """Live tables a one-projector rebuild reads for its copies but does not replace."""
        others = [p for p in PROJECTOR_TABLES if p not in self.projectors]
        return entity_tables(others)

    def _open(self) -> Engine:
        if self.postgres:
            return create_engine(self.live.url, search_path=f'"{self.name}"')
        return create_engine(self.live.url.set(database=str(self.path)))

    def build(
        self,
        source: Source,
        config: Settings,
        *,
        progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> RunResult:
        """Replay the source into the shadow until caught up (or asked to stop)."""
        assert self.engine is not None
        # The shadow's own lock: live writers go on meanwhile; only the swap takes theirs.
        return catch_up(
            self.engine,
            source,
            self._settings(config),
            progress=progress,
            should_stop=should_stop,
            lock=f"rebuild:{self.name}",
        )

    def _settings(self, config: Settings) -> Settings:
        settings = replace(config, projectors=self.projectors)
        if config.commit_seconds is None:
            # No one else writes the shadow, and its build holds its own lock. A commit
            # mid-build ends the bulk path for the rest of it (tables no longer empty:
            # rows upserted, copies tracked): a 1M rebuild took 52.8-55.1 s and 283-296 MB
            # committing every 30 s on SQLite, 44.5-48.2 s and 267-269 MB in one
            # transaction; on PostgreSQL, committing after 15 s: 31.5-32.1 s and 293-296 MB,
            # in one transaction: 27.6-31.0 s and 264 MB.
            settings = replace(settings, commit_seconds=DEFAULT_SHADOW_COMMIT_SECONDS)
        return settings

    # --- swapping -----------------------------------------------------------------------

    def swap(self, source: Source, config: Settings, *, keep_old: bool) -> SwapReport:
        """Catch up to the head, check, and put the shadow in place in one transaction."""
        assert self.engine is not None
        if self.postgres:
            # Table by table on two connections: the server builds one table's indexes
            # while it samples another's (this process only waits meanwhile).
            failed = threading.Event()

            def finish(table: str) -> None:
                if failed.is_set():
                    return  # another table's failed: the rebuild fails, start no other
                try:
                    self._finish(table)
                except BaseException:
                    failed.set()  # before its future says so: the other thread sees it
                    raise

            with ThreadPoolExecutor(2, thread_name_prefix="projections-finish") as pool:
                tasks = [pool.submit(finish, table) for table in READ_MODEL]
                wait(tasks, return_when=FIRST_EXCEPTION)
                pool.shutdown(cancel_futures=True)
                for task in tasks:
                    if not task.cancelled():
                        task.result()
        else:
            with self.engine.begin() as connection:
                _deferred_indexes(connection, create=True)  # built once, after the bulk load
        started = datetime.now(UTC)
        if self.postgres:
            report = self._swap_postgres(source, config, keep_old=keep_old)
        else:
            report = self._swap_sqlite(source, config)
        report.swap_seconds = (datetime.now(UTC) - started).total_seconds()
        self.drop(keep=report.kept_old is not None)
        return report

    def _finish(self, table: str) -> None:
        """Build the table's deferred indexes, then its statistics (PostgreSQL)."""
        assert self.engine is not None
        with self.engine.begin() as connection:
            _deferred_indexes(connection, create=True, tables=(table,))
            # Statistics of the new rows now, not when autovacuum comes round: the first
            # catch-up and the first queries after the swap get good plans.
            connection.exec_driver_sql(f"ANALYZE {table}")

    def _swap_postgres(self, source: Source, config: Settings, *, keep_old: bool) -> SwapReport:
        settings = self._settings(config)
        shadow, report = f'"{self.name}"', SwapReport()
        old = f"projections_old_{datetime.now(UTC):%Y%m%d%H%M%S}"
        moved = list(READ_MODEL) if self.full else entity_tables(self.projectors)
        with self.live.connect() as connection, connection.begin():
            dialect.lock_writers(connection)
            dialect.set_search_path(connection, f"{shadow}, public")
            while one_batch(connection, source, settings)[0] is not None:
                pass  # the tail that arrived since the build: the shadow now covers the head
            dialect.set_search_path(connection, "public")
            report.rows = self._check(connection, f"{shadow}.")
            views = _dependent_views(connection, moved)
            for table in moved:
                _copy_security(connection, table, shadow)
                _copy_indexes(connection, table, self.name)
            connection.exec_driver_sql(f'CREATE SCHEMA "{old}"')
            for table in moved:
                connection.exec_driver_sql(f'ALTER TABLE public.{table} SET SCHEMA "{old}"')
                connection.exec_driver_sql(f"ALTER TABLE {shadow}.{table} SET SCHEMA public")
            if not self.full:
                self._merge_shared(connection, f"{shadow}.", "public.")
                _refresh_copies(connection, moved, "public.", postgres=True)
            for name, definition, options in views:
                with_options = f" WITH ({', '.join(options)})" if options else ""
                connection.exec_driver_sql(
                    f"CREATE OR REPLACE VIEW public.{name}{with_options} AS {definition}"
                )
            if keep_old:
                report.kept_old = old
            else:
                # In the swap's transaction: a process killed right after it leaves no old
                # tables behind that nothing would ever drop.
                connection.exec_driver_sql(f'DROP SCHEMA "{old}" CASCADE')
        return report

    def _swap_sqlite(self, source: Source, config: Settings) -> SwapReport:
        assert self.engine is not None
        settings = self._settings(config)
        report = SwapReport()
        catch_up(self.engine, source, settings)  # the tail that arrived during the build
        with _attached(self.live, self.engine, "shadow") as connection:
            report.rows = self._check(connection, "shadow.")
            tables = list(READ_MODEL) if self.full else entity_tables(self.projectors)
            for table in tables:
                columns = _columns(table)
                # The live table's indexes (ours and any of the user's) are built again
                # after the copy: one sort instead of a million scattered inserts (the
                # ledger's copy took 1.9 s instead of 4.8 s). Readers see none of it
                # before the commit.
                indexes = connection.exec_driver_sql(
                    "SELECT name, sql FROM main.sqlite_master WHERE type = 'index' "
                    "AND tbl_name = ? AND sql IS NOT NULL",
                    (table,),
                ).all()
                connection.exec_driver_sql(f"DELETE FROM main.{table}")
                for name, _ in indexes:
                    quoted = name.replace('"', '""')
                    connection.exec_driver_sql(f'DROP INDEX main."{quoted}"')
                connection.exec_driver_sql(
                    f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM shadow.{table}"
                )
                for name, definition in indexes:
                    try:
                        connection.exec_driver_sql(definition)  # unqualified: main's table
                    except sa.exc.DBAPIError as exc:
                        raise RebuildError(
                            f"the index {name} on {table} cannot be built on the rebuilt "
                            f"rows ({_one_line(exc.orig)}); drop or change it, then rebuild"
                        ) from None
            if not self.full:
                self._merge_shared(connection, "shadow.", "main.")
                _refresh_copies(connection, tables, "main.", postgres=False)
        return report

    def _check(self, connection: sa.Connection, prefix: str) -> dict[str, int]:
        """Row counts of the shadow, and every rebuilt projector's checkpoint present."""
        rows = {
            table: int(
                connection.exec_driver_sql(f"SELECT count(*) FROM {prefix}{table}").scalar_one()
            )
            for table in READ_MODEL
        }
        found = {
            name
            for (name,) in connection.exec_driver_sql(
                f"SELECT projector FROM {prefix}projection_checkpoints"
            )
        }
        missing = set(self.projectors) - found
        if missing and found:
            raise RebuildError(f"the shadow has no checkpoint for {sorted(missing)}")
        return rows

    def _merge_shared(self, connection: sa.Connection, shadow: str, live: str) -> None:
        """One-projector rebuild: replace that projector's ledger, anomalies and checkpoint."""
        names = ", ".join(f"'{p}'" for p in self.projectors)
        for table in ("processed_events", "event_anomalies", "projection_checkpoints"):
            columns = _columns(table, without=("id",))
            connection.exec_driver_sql(f"DELETE FROM {live}{table} WHERE projector IN ({names})")
            connection.exec_driver_sql(
                f"INSERT INTO {live}{table} ({columns}) SELECT {columns} FROM {shadow}{table} "
                f"WHERE projector IN ({names})"
            )

    # --- cleaning up --------------------------------------------------------------------

    def drop(self, *, keep: bool = False) -> None:
        """Remove the shadow (schema or file)."""
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if self.postgres:
            with self.live.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(f"{self.path}{suffix}")
            if candidate.exists():
                os.remove(candidate)


# Indexes the build itself reads through; every other secondary index is built at the end.
BUILD_INDEXES = frozenset(
    {
        ("processed_events", ("projector", "aggregate_id", "idempotency_key")),
        ("channel_mappings", ("provider_id",)),
        ("conversations", ("channel_id",)),
        ("conversations", ("contact_id",)),
    }
)


def _deferred_indexes(
    connection: sa.Connection, *, create: bool, tables: Sequence[str] = READ_MODEL
) -> None:
    """Drop (or create, if missing) the secondary indexes a bulk build does without."""
    for name in tables:
        table = TABLES[name]
        for index in sorted(table.indexes, key=lambda i: [c.name for c in i.columns]):
            if (name, tuple(c.name for c in index.columns)) in BUILD_INDEXES:
                continue
            if create:
                connection.execute(sa.schema.CreateIndex(index, if_not_exists=True))
            else:
                connection.execute(sa.schema.DropIndex(index, if_exists=True))


def _refresh_copies(
    connection: sa.Connection, rebuilt: Sequence[str], schema: str, *, postgres: bool
) -> None:
    """Set the copies between rebuilt and kept tables from the parents now in place.

    A one-projector rebuild's copies come from the kept parents as they were when it
    began (live writers may have changed them since), and a rebuilt parent may hold
    values its kept children never copied (a new version of its projector). Every
    other write keeps copies current, and later runs rely on it: they do not read the
    parent of a row whose reference did not change.
    """
    differs = "IS DISTINCT FROM" if postgres else "IS NOT"
    for child, reference, parent, columns in COPIES:
        if child not in rebuilt and parent not in rebuilt:
            continue
        (key,) = (c.name for c in TABLES[parent].primary_key.columns)
        pairs = sorted(columns.items())
        sets = ", ".join(f"{target} = p.{origin}" for target, origin in pairs)
        stale = " OR ".join(f"c.{target} {differs} p.{origin}" for target, origin in pairs)
        connection.exec_driver_sql(
            f"UPDATE {schema}{child} AS c SET {sets} FROM {schema}{parent} AS p "
            f"WHERE p.{key} = c.{reference} AND ({stale})"
        )
        cleared = ", ".join(f"{target} = NULL" for target, _ in pairs)
        held = " OR ".join(f"c.{target} IS NOT NULL" for target, _ in pairs)
        connection.exec_driver_sql(  # no parent (or no reference): NULL copies
            f"UPDATE {schema}{child} AS c SET {cleared} WHERE ({held}) AND NOT EXISTS "
            f"(SELECT 1 FROM {schema}{parent} AS p WHERE p.{key} = c.{reference})"
        )


def _columns(table: str, without: Sequence[str] = ()) -> str:
    return ", ".join(c.name for c in TABLES[table].columns if c.name not in without)


@contextmanager
def _attached(engine: Engine, other: Engine, alias: str) -> Iterator[sa.Connection]:
    """A transaction on `engine` with `other`'s SQLite file attached as `alias`."""
    with engine.connect() as connection:
        # ATTACH cannot run inside a transaction: use the driver before SQLAlchemy begins one.
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute(f"ATTACH DATABASE ? AS {alias}", (other.url.database,))
        # Building an index over a whole table sorts more than memory should hold: let
        # the sort spill to a temporary file, not to memory (the connections' setting).
        (store,) = driver.execute("PRAGMA temp_store").fetchone()
        driver.execute("PRAGMA temp_store = FILE")
        try:
            with connection.begin():
                yield connection
        finally:
            driver.execute(f"PRAGMA temp_store = {int(store)}")
            driver.execute(f"DETACH DATABASE {alias}")


_VIEWS = sa.text(
    """
    SELECT DISTINCT v.relname, pg_get_viewdef(v.oid) AS definition, v.reloptions
    FROM pg_depend d
    JOIN pg_rewrite r ON d.objid = r.oid
    JOIN pg_class v ON r.ev_class = v.oid
    JOIN pg_class t ON d.refobjid = t.oid
    JOIN pg_namespace tn ON t.relnamespace = tn.oid
    WHERE tn.nspname = 'public' AND t.relname = ANY(:tables) AND v.relkind = 'v'
      AND v.oid <> t.oid
    """
)


def _dependent_views(
    connection: sa.Connection, tables: Sequence[str]
) -> list[tuple[str, str, list[str]]]:
    """Views over the tables being swapped, with their definitions and options."""
    rows = connection.execute(_VIEWS, {"tables": list(tables)}).all()
    return [
        (row.relname, row.definition.rstrip().rstrip(";"), list(row.reloptions or []))
        for row in rows
    ]


_ACL = sa.text(
    """
    SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee,
           a.privilege_type
    FROM pg_class c
    JOIN pg_namespace n ON c.relnamespace = n.oid
    CROSS JOIN LATERAL aclexplode(c.relacl) a
    LEFT JOIN pg_roles r ON r.oid = a.grantee
    WHERE n.nspname = 'public' AND c.relname = :table
    """
)
_RLS = sa.text(
    """
    SELECT c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
    JOIN pg_namespace n ON c.relnamespace = n.oid
    WHERE n.nspname = 'public' AND c.relname = :table
    """
)
_POLICIES = sa.text(
    """
    SELECT policyname, permissive, roles::text[] AS roles, cmd, qual, with_check
    FROM pg_policies WHERE schemaname = 'public' AND tablename = :table
    """
)


def _copy_security(connection: sa.Connection, table: str, shadow: str) -> None:
    """Give the shadow table the live table's grants, row-level security and policies."""
    for grantee, privilege in connection.execute(_ACL, {"table": table}):
        connection.exec_driver_sql(f"GRANT {privilege} ON {shadow}.{table} TO {grantee}")
    enabled, forced = connection.execute(_RLS, {"table": table}).one()
    if enabled:
        connection.exec_driver_sql(f"ALTER TABLE {shadow}.{table} ENABLE ROW LEVEL SECURITY")
    if forced:
        connection.exec_driver_sql(f"ALTER TABLE {shadow}.{table} FORCE ROW LEVEL SECURITY")
    for policy in connection.execute(_POLICIES, {"table": table}).mappings():
        roles = ", ".join(
            "PUBLIC" if role == "public" else _quote(connection, role) for role in policy["roles"]
        )
        statement = (
            f"CREATE POLICY {_quote(connection, policy['policyname'])} ON {shadow}.{table} "
            f"AS {policy['permissive']} FOR {policy['cmd']} TO {roles}"
        )
        if policy["qual"] is not None:
            statement += f" USING ({policy['qual']})"
        if policy["with_check"] is not None:
            statement += f" WITH CHECK ({policy['with_check']})"
        connection.exec_driver_sql(statement)


# Valid indexes of a live table that its shadow lacks (the ones users add for their
# queries), apart from those behind the table's own constraints.
_ADDED_INDEXES = sa.text(
    "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index AS i "
    "JOIN pg_class AS c ON c.oid = i.indexrelid "
    "WHERE i.indrelid = to_regclass('public.' || :table) AND i.indisvalid AND i.indisready "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint "
    "WHERE conindid = i.indexrelid AND conrelid = i.indrelid) "
    "AND NOT EXISTS (SELECT 1 FROM pg_indexes AS s "
    "WHERE s.schemaname = :shadow AND s.indexname = c.relname) "
    "ORDER BY c.relname"
)


# What pg_get_indexdef writes before the table's name (an index name is quoted when needed).
_INDEX_HEAD = r'^(CREATE (?:UNIQUE )?INDEX (?:"(?:[^"]|"")*"|\S+) ON (?:ONLY )?)public\.'


def _copy_indexes(connection: sa.Connection, table: str, shadow: str) -> None:
    """Build on the shadow table the indexes users added to the live one."""
    found = connection.execute(_ADDED_INDEXES, {"table": table, "shadow": shadow}).all()
    for name, definition in found:
        head = _INDEX_HEAD + re.escape(table) + " "
        on_shadow, replaced = re.subn(head, rf'\g<1>"{shadow}".{table} ', definition, count=1)
        if not replaced:
            raise RebuildError(f"cannot rebuild your index {name} on {table}: {definition}")
        try:
            connection.exec_driver_sql(on_shadow)
        except sa.exc.DBAPIError as exc:
            raise RebuildError(
                f"the index {name} on {table} cannot be built on the rebuilt rows "
                f"({_one_line(exc.orig)}); drop or change it, then rebuild"
            ) from None


def _one_line(error: BaseException | None) -> str:
    return " ".join(str(error).split())


def _quote(connection: sa.Connection, name: str) -> str:
    return str(connection.execute(sa.select(sa.func.quote_ident(name))).scalar_one())


def shadow_rebuild(
    engine: Engine,
    source: Source,
    config: Settings,
    *,
    projectors: Sequence[str] | None = None,
    resume: bool = False,
    keep_old: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[RunResult, SwapReport | None, Any]:
    """Rebuild into a shadow and swap it in; the live model is untouched until the swap."""
    shadow = Shadow(engine, projectors or tuple(PROJECTOR_TABLES))
    # Held from preparing to swapping: a second rebuild would drop this one's shadow.
    with shadow.claimed("rebuild") as claim:
        try:
            resumed = shadow.prepare(resume=resume)
            result = shadow.build(source, config, progress=progress, should_stop=should_stop)
            if result.interrupted:
                if shadow.engine is not None:
                    shadow.engine.dispose()
                return result, None, resumed  # kept for --resume
            if not claim.held():
                raise shadow.lost("rebuild")
            report = shadow.swap(source, config, keep_old=keep_old)
        except BaseException:
            if claim.held():  # else the shadow may be another rebuild's by now
                shadow.drop()
            elif shadow.engine is not None:
                shadow.engine.dispose()
            raise
    return result, report, resumed
