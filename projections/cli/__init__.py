"""The command line: one verb per job, --json for scripts, exit codes 0 / 1 / 2."""

from __future__ import annotations

from projections.cli import inspecting, projecting, readers
from projections.cli.app import app

__all__ = ["app", "inspecting", "main", "projecting", "readers"]


def main() -> None:
    """Entry point for `python -m projections`."""
    app()
