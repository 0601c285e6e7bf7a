"""Verbs for SQL users: tenant reader roles and PII hashes."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from projections.cli.app import (
    DatabaseUrl,
    JsonFlag,
    app,
    guarded,
    out,
)
from projections.config import database_url as read_model_url
from projections.config import pii_key

# --- SQL users: tenant readers and PII hashes (projections/access.py, projections/redact.py) ---
ReaderRole = Annotated[str, typer.Argument(help="The reader's PostgreSQL login role.")]


@app.command("grant-reader")
def grant_reader_command(
    role: ReaderRole,
    customer: Annotated[
        list[str], typer.Option("--customer", "-c", help="A customer id it may read (repeat).")
    ],
    database_url: DatabaseUrl = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            envvar="PROJECTIONS_READER_PASSWORD",
            help="Set its login password (default: $PROJECTIONS_READER_PASSWORD, else unchanged).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Make these the only customers it may read.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create or update a login role that may only SELECT its customers' rows (PostgreSQL)."""

    def work() -> None:
        from projections import access, runtime

        with runtime.engine(read_model_url(database_url), migrate_first=False) as engine:
            scope = access.grant_reader(engine, role, customer, password=password, replace=replace)
        if as_json:
            out.print_json(orjson.dumps(scope.as_dict()).decode())
            return
        verb = "created" if scope.created else "updated"
        out.print(f"reader {role} {verb}: reads {', '.join(scope.customers)}", highlight=False)
        if scope.unknown_customers:
            unknown = ", ".join(scope.unknown_customers)
            out.print(f"[yellow]not among customers yet:[/] {unknown}", highlight=False)

    guarded(work)


@app.command("revoke-reader")
def revoke_reader_command(
    role: ReaderRole,
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", "-c", help="Only stop it reading this customer (repeat)."),
    ] = None,
    drop_role: Annotated[
        bool, typer.Option("--drop-role", help="Also drop the login role itself.")
    ] = False,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Take customers, or all access, away from a reader role (PostgreSQL)."""

    def work() -> None:
        from projections import access, runtime

        with runtime.engine(read_model_url(database_url), migrate_first=False) as engine:
            scope = access.revoke_reader(engine, role, customer or (), drop_role=drop_role)
        if as_json:
            out.print_json(orjson.dumps(scope.as_dict()).decode())
        elif scope.dropped:
            out.print(f"reader {role} dropped", highlight=False)
        elif scope.customers:
            out.print(f"reader {role}: reads {', '.join(scope.customers)}", highlight=False)
        else:
            out.print(f"reader {role}: reads nothing", highlight=False)

    guarded(work)


@app.command("hash-pii")
def hash_pii_command(
    value: Annotated[str, typer.Argument(help="A channel address or display name.")],
) -> None:
    """Print the keyed hash that stands for VALUE in a read model built with --redact-pii."""
    from projections import redact

    print(guarded(lambda: redact.PiiRedactor(pii_key()).hash(value)))
