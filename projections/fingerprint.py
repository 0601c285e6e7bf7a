"""Fingerprints of the code that builds each projector's rows: handlers and table definitions."""

from __future__ import annotations

import hashlib
from types import ModuleType

from projections.families import channels, contacts, conversations, customers, providers
from projections.schema import PROJECTOR_TABLES
from projections.tables import TABLES

# Bump when the rules around every handler (duplicates, versions, copies) change what is written.
RULES_VERSION = 1

MODULES: dict[str, ModuleType] = {
    "customers": customers,
    "contacts": contacts,
    "providers": providers,
    "channels": channels,
    "conversations": conversations,
}


def fingerprint(projector: str) -> str:
    """A short hash of the projector's handler version, the shared rules and its tables."""
    parts = [projector, f"rules={RULES_VERSION}", f"handlers={MODULES[projector].VERSION}"]
    for name in PROJECTOR_TABLES[projector]:
        for column in TABLES[name].columns:
            parts.append(f"{name}.{column.name}:{column.type.__class__.__name__}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def current() -> dict[str, str]:
    """Every projector's fingerprint as the running code computes it."""
    return {name: fingerprint(name) for name in MODULES}
