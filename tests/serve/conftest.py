"""The serve tests use the shared fixtures of tests/conftest.py."""

from tests.gw import make_config, start_gateway, url

__all__ = ["make_config", "start_gateway", "url"]
