"""The few exception types a user of projections can meet."""

from __future__ import annotations


class ProjectionsError(Exception):
    """Base of every error the command line turns into a message and an exit code."""

    exit_code = 1


class ConfigurationError(ProjectionsError):
    """A setting, URL, flag or path is unusable as given."""

    exit_code = 2


class SourceMismatchError(ProjectionsError):
    """The source no longer matches the checkpoint (truncated, replaced or another source)."""

    exit_code = 2


class DatabaseUnavailableError(ProjectionsError):
    """The database cannot be reached or refused the connection."""

    exit_code = 1


class SchemaError(ProjectionsError):
    """The database schema is missing, newer than this code, or cannot be migrated."""

    exit_code = 1
