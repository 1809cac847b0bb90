"""The error types every part of eprl raises for a user's mistake (the CLI prints them as one line, exit 2)."""


class EprlError(Exception):
    """Base of the errors eprl raises on purpose: something the user can fix, reported without a traceback."""


class ConfigError(EprlError, ValueError):
    """A configuration problem, reported as one line naming the field (CLI exit code 2).

    A ValueError too, so that pydantic validators may raise it and older `except ValueError` callers still catch it.
    """
