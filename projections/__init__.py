"""Read models of a messaging platform's domain events, kept in plain SQL tables."""

from __future__ import annotations

__version__ = "0.1.0"
