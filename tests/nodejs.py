"""Run a snippet of the wall's JavaScript modules in node and read what it prints."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import require_binary


def run_module_script(script: str) -> Any:
    """Run ``script`` as an ES module in node; its last line of output, as JSON."""
    node = require_binary("node", "nodejs")
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
