"""Fixtures of the browser tests: Debian's Chromium (never downloaded)."""

from __future__ import annotations

import pytest

from tests.conftest import require_binary


@pytest.fixture
def chromium() -> str:
    require_binary("node", "nodejs")  # the dashboard's npm packages
    return require_binary("/usr/bin/chromium", "chromium")
