"""The error a bad configuration raises, shared by config.py and what it checks."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""
