"""Personally identifying values: a keyed hash instead of channel addresses and display names.

With redaction on (`--redact-pii` or PROJECTIONS_REDACT_PII=1), decoding replaces the
values below with `h:` + HMAC-SHA256(key, value) in hex before any handler sees them, so
no table ever receives them; the copies in `conversations` follow. The hash is the
same for the same value and key, so joins and lookups by hash still work, and
`projections hash-pii VALUE` gives the hash to look up. A quarantined line keeps only
its length and hash. docs/tables.md lists what redaction does not cover.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from projections.config import redact_pii_key
from projections.db import create_engine, translate_errors
from projections.errors import ConfigurationError

PREFIX: Final = "h:"
# Payload fields (and changed_fields keys) that identify a person, by projector.
PII_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "contacts": ("display_name",),
    "channels": ("address", "normalized"),
}
_HASHED = re.compile(r"h:[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class PiiRedactor:
    """Hashes identifying values with one secret key."""

    key: bytes

    def hash(self, value: str) -> str:
        """The keyed hash that stands for `value` in every table."""
        return PREFIX + hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()

    def redact_fields(
        self, projector: str, fields: dict[str, Any], changes: dict[str, Any]
    ) -> None:
        """Replace the identifying string values of one event's fields and changes in place."""
        for name in PII_FIELDS.get(projector, ()):
            for values in (fields, changes):
                value = values.get(name)
                if isinstance(value, str):
                    values[name] = self.hash(value)

    def quarantine_text(self, line: bytes) -> str:
        """What quarantine keeps of a bad line: its length and keyed hash, no content."""
        digest = hmac.new(self.key, line, hashlib.sha256).hexdigest()
        return f"[redacted: {len(line)} bytes, {PREFIX}{digest}]"


_active: PiiRedactor | None = None
_resolved = False


def active() -> PiiRedactor | None:
    """The redactor in force: set by `redacting`, else from PROJECTIONS_REDACT_PII once."""
    global _active, _resolved
    if not _resolved:
        key = redact_pii_key(None)
        _active = PiiRedactor(key) if key is not None else None
        _resolved = True
    return _active


@contextmanager
def redacting(key: bytes | None) -> Iterator[PiiRedactor | None]:
    """Hash identifying values with `key` (None: keep them) while the block runs."""
    global _active, _resolved
    previous = (_active, _resolved)
    _active = PiiRedactor(key) if key is not None else None
    _resolved = True
    try:
        yield _active
    finally:
        _active, _resolved = previous


def looks_hashed(value: str) -> bool:
    """True when a stored value is one of our keyed hashes."""
    return _HASHED.match(value) is not None


_SAMPLES: Final = (("channel_mappings", "normalized"), ("contacts", "display_name"))


def check_read_model(url: sa.URL, key: bytes | None) -> None:
    """Refuse to add plain values to a redacted read model, or hashes to a plain one."""
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        return
    engine = create_engine(url)
    try:
        with translate_errors(url), engine.connect() as connection:
            names = set(sa.inspect(connection).get_table_names())
            for table, column in _SAMPLES:
                if table not in names:
                    continue
                sample = connection.execute(
                    sa.text(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL LIMIT 1")
                ).scalar()
                if sample is not None and looks_hashed(sample) != (key is not None):
                    raise ConfigurationError(_mixing_message(key is not None))
    finally:
        engine.dispose()


def _mixing_message(redacting_now: bool) -> str:
    if redacting_now:
        return (
            "the read model holds plain addresses and names; --redact-pii would mix hashes "
            "into it: run `projections rebuild --redact-pii` instead"
        )
    return (
        "the read model holds hashed addresses and names (built with --redact-pii): run "
        "with --redact-pii (or PROJECTIONS_REDACT_PII=1), or rebuild to keep plain values"
    )
