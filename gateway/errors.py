"""The errors a user can fix: a bad configuration (shared by config.py and what it
checks), and the one line that says what went wrong at start (the CLI, a worker)."""

from __future__ import annotations

import errno

__all__ = ["ConfigError", "user_error"]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def user_error(exc: BaseException) -> str | None:
    """The one line to show for an error a user can fix, or None for a bug."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = user_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            text += " (another process has this port: choose another with --port/--admin-port)"
        elif exc.errno == errno.EACCES:
            text += " (ports below 1024 need privileges)"
        return text
    return None
