"""Settings: flags first, then PROJECTIONS_* environment variables, then defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from projections.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_DATABASE_URL = "sqlite:///projections.db"
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_COMMIT_SECONDS = 30.0
DEFAULT_SQLITE_COMMIT_SECONDS = 10.0
# A rebuild's shadow has no other writer and its own lock; each commit mid-build ends the
# bulk path (later flushes upsert), so it commits seldom: a crash loses at most this much.
DEFAULT_SHADOW_COMMIT_SECONDS = 120.0
DEFAULT_RESIDENT_ROWS = 1_000_000
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json", ".gz")


class VersionMode(StrEnum):
    """How the envelope's `version` is read (SPEC §4)."""

    sequence = "sequence"
    none = "none"


@dataclass(frozen=True)
class Settings:
    """Everything one run of a verb needs to know."""

    database_url: URL
    log_url: URL | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    version_mode: VersionMode = VersionMode.sequence
    strict: bool = False
    projectors: tuple[str, ...] | None = None  # only these (a one-projector rebuild)
    commit_seconds: float | None = None  # longest a transaction of batches runs (None: default)
    resident_rows: int = DEFAULT_RESIDENT_ROWS  # rows held in memory before a commit drops them

    @property
    def commit_interval(self) -> float:
        """Seconds a run may hold one transaction: shorter on SQLite, where a writer waiting
        for the file's lock gives up after 30 s."""
        if self.commit_seconds is not None:
            return self.commit_seconds
        return DEFAULT_COMMIT_SECONDS if self.is_postgres else DEFAULT_SQLITE_COMMIT_SECONDS

    @property
    def is_postgres(self) -> bool:
        """True when the read model lives in PostgreSQL."""
        return self.database_url.get_backend_name() == "postgresql"


def database_url(flag: str | None) -> URL:
    """Resolve the database URL from the flag, the environment or the embedded default."""
    raw = flag or os.environ.get("PROJECTIONS_DATABASE_URL") or DEFAULT_DATABASE_URL
    return normalise_url(raw)


def log_url(flag: str | None) -> URL | None:
    """The database holding event_log, when it is not the read model's own."""
    raw = flag or os.environ.get("PROJECTIONS_LOG_URL")
    return normalise_url(raw) if raw else None


def normalise_url(raw: str) -> URL:
    """Turn a user's URL into one SQLAlchemy can open with the drivers we ship."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {raw!r}") from exc
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if url.drivername != "sqlite":
            raise ConfigurationError(
                f"unsupported SQLite driver {url.drivername!r}; use sqlite:///"
            )
        return url
    raise ConfigurationError(
        f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def env_int(name: str, default: int) -> int:
    """Read a positive integer setting from the environment."""
    value = _env_number(name, int, "a whole number")
    if value is None:
        return default
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


def env_seconds(name: str) -> float | None:
    """Read a duration in seconds (0 or more) from the environment; None when unset."""
    value = _env_number(name, float, "a number of seconds")
    if value is not None and not value >= 0:  # also refuses nan
        raise ConfigurationError(f"{name} must be 0 or more seconds, got {value}")
    return value


_Number = TypeVar("_Number", int, float)


def _env_number(name: str, parse: Callable[[str], _Number], what: str) -> _Number | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be {what}, got {raw!r}") from exc


def is_db_source(source: str) -> bool:
    """True when SRC names the database event log rather than a file."""
    return source == "db"


def ndjson_path(source: str) -> Path:
    """Validate an NDJSON source path given on the command line."""
    path = Path(source)
    if not path.name.endswith(NDJSON_SUFFIXES):
        raise ConfigurationError(
            f"source {source!r} is neither 'db' nor an NDJSON file (.ndjson, .jsonl, .gz)"
        )
    if not path.exists():
        raise ConfigurationError(f"source file not found: {source}")
    if not path.is_file():
        raise ConfigurationError(f"source is not a regular file: {source}")
    return path


# --- PII redaction (docs/tables.md, "Personally identifying values") ---
REDACT_PII_MIN_KEY = 16
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def redact_pii_key(flag: bool | None) -> bytes | None:
    """The PII hashing key when redaction is on (the flag, else PROJECTIONS_REDACT_PII)."""
    enabled = flag
    if enabled is None:
        raw = os.environ.get("PROJECTIONS_REDACT_PII", "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ConfigurationError(f"PROJECTIONS_REDACT_PII must be 1 or 0, got {raw!r}")
        enabled = raw in _TRUE
    return pii_key() if enabled else None


def pii_key() -> bytes:
    """The secret key of the PII hash, from PROJECTIONS_REDACT_PII_KEY."""
    key = os.environ.get("PROJECTIONS_REDACT_PII_KEY", "").encode()
    if not key:
        raise ConfigurationError(
            "PII redaction needs a secret key: set PROJECTIONS_REDACT_PII_KEY "
            f"(at least {REDACT_PII_MIN_KEY} characters, e.g. `openssl rand -hex 32`)"
        )
    if len(key) < REDACT_PII_MIN_KEY:
        raise ConfigurationError(
            f"PROJECTIONS_REDACT_PII_KEY is too short: use at least {REDACT_PII_MIN_KEY} "
            "characters (phone numbers and names are easy to guess under a short key)"
        )
    return key
